"""Likelihood heads: the per-step output of a model is a distribution, not a number.

A :class:`~hiddenstate.model.SequenceModel` built with ``likelihood="studentt"`` (or
``"normal"``, ``"negbin"``) has a head of ``output_size * n_params`` units. Its ``y`` is the raw
head output ``(batch, steps, n_params * output_size)``; :meth:`Likelihood.distribution` maps it
to a ``torch.distributions`` object, and training minimises :meth:`Likelihood.nll`::

    raw (batch, steps, n_params * out) --view--> (batch, steps, n_params, out) --domain map--> params
    studentt  loc, scale = softplus, df = 2 + softplus     (df > 2: the variance exists)
    normal    loc, scale = softplus
    negbin    total_count = softplus, logits                (mean = total_count * exp(logits))

``likelihood=True`` or ``"default"`` means Student-t, which is robust to outliers, as DeepAR's
default. Series are scaled as DeepAR's *mean scaler* does (:func:`mean_scale`): the model reads
``y / scale`` and the scale is folded back into the distribution, so the likelihood and every
draw are in the series' own units: ``loc * scale`` and ``sigma * scale`` for Student-t and
normal, ``logits + log(scale)`` for the negative binomial (its mean times ``scale``, its counts
still integers).

>>> lik = get_likelihood("studentt")
>>> raw = torch.zeros(2, 5, 3 * 1)                     # (batch, steps, n_params * out)
>>> d = lik.distribution(raw, scale=torch.full((2, 1, 1), 10.0))
>>> tuple(d.mean.shape), float(d.loc[0, 0, 0]), round(float(d.scale[0, 0, 0]), 4)
((2, 5, 1), 0.0, 6.9315)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import distributions as D  # noqa: N812

from hiddenstate.errors import ConfigError, ShapeError

__all__ = [
    "DEFAULT_LIKELIHOOD",
    "LIKELIHOODS",
    "Likelihood",
    "get_likelihood",
    "mean_scale",
    "resolve_likelihood",
]

LIKELIHOODS = ("studentt", "normal", "negbin")
DEFAULT_LIKELIHOOD = "studentt"
_MIN_SCALE = 1e-6


def resolve_likelihood(value: Any) -> str | None:
    """The likelihood's name for a ``likelihood=`` argument: None/False -> None, True or ``"default"``
    -> ``"studentt"``, a name in :data:`LIKELIHOODS` -> itself.

    >>> resolve_likelihood(True), resolve_likelihood(None), resolve_likelihood("negbin")
    ('studentt', None, 'negbin')
    """
    if value is None or value is False:
        return None
    if value is True or value == "default":
        return DEFAULT_LIKELIHOOD
    if isinstance(value, str) and value in LIKELIHOODS:
        return value
    raise ConfigError(
        f"unknown likelihood {value!r}; expected None, True, 'default' or one of {', '.join(LIKELIHOODS)}"
    )


class Likelihood:
    """One distribution family: how many parameters per output, their domain map, the NLL."""

    name: str = ""
    param_names: tuple[str, ...] = ()

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def split(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``raw`` ``(..., n_params * out)`` -> ``n_params`` tensors ``(..., out)``, unconstrained."""
        k = self.n_params
        if raw.shape[-1] % k:
            raise ShapeError(
                f"{self.name} head: the last dimension {raw.shape[-1]} is not a multiple of {k} parameters"
            )
        return tuple(raw.unflatten(-1, (k, raw.shape[-1] // k)).unbind(-2))

    def distribution(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> D.Distribution:
        """The distribution of each output, in the series' units (``scale`` broadcasts to ``(..., out)``)."""
        raise NotImplementedError

    def nll(self, raw: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood of ``y`` ``(..., out)`` per element, ``(..., out)``."""
        return -self.distribution(raw, scale).log_prob(y)

    def mean(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.distribution(raw, scale).mean

    #: whether :meth:`sample` takes a ``spread`` other than 1 (a location-scale family)
    spreads = False

    def sample(
        self,
        raw: torch.Tensor,
        scale: torch.Tensor | None = None,
        spread: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One draw per row, in the series' units (the hot loop of sample paths). ``spread``
        multiplies the distribution's scale parameter (location-scale families only);
        ``generator``: the random numbers' source (None: torch's global one). Each family draws
        from its ``torch.distributions`` object's law (normal and negative binomial: the very
        draws of its ``sample``, from the same random numbers)."""
        if spread != 1.0 and not self.spreads:
            raise ConfigError(f"likelihood {self.name!r} has no scale parameter to spread; spread must be 1")
        drawn = self._kernel_draw(raw, scale, float(spread), generator)
        if drawn is not None:
            return drawn
        loc, z = self._offset(raw, scale, generator)
        return (z.mul_(spread) if spread != 1.0 else z).add_(loc)

    def _kernel_draw(
        self, raw: torch.Tensor, scale: torch.Tensor | None, spread: float, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """The same draws through the C kernel, where a family has it and it takes these tensors; else None."""
        return None

    def _offset(
        self, raw: torch.Tensor, scale: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A location-scale family's ``(loc, draw - loc)``, both in the series' units."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Likelihood({self.name!r})"


class _StudentT(Likelihood):
    name = "studentt"
    param_names = ("loc", "scale", "df")
    spreads = True

    def _params(self, raw: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``(df, loc, sigma)`` in the series' units."""
        loc, s, df = self.split(raw)
        sigma = F.softplus(s) + _MIN_SCALE
        if scale is not None:
            loc, sigma = loc * scale, sigma * scale
        return 2.0 + F.softplus(df), loc, sigma

    def distribution(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> D.Distribution:
        return D.StudentT(*self._params(raw, scale), validate_args=False)

    def _kernel_draw(
        self, raw: torch.Tensor, scale: torch.Tensor | None, spread: float, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        # on the CPU, the arithmetic around torch's softplus, gamma and normal draws in two passes
        # of the C kernel: the same random numbers and operations, so the draws of _offset, bit for bit
        from hiddenstate._kernels.fused import studentt_draw

        return None if raw.dim() != 2 or raw.requires_grad else studentt_draw(raw, scale, spread, _MIN_SCALE, generator)

    def _offset(
        self, raw: torch.Tensor, scale: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # D.StudentT's law (a normal over the root of a chi-square / df) without building the
        # distribution objects on every step; the chi-square is drawn first, so the random
        # numbers are not D.StudentT.sample's. The parameters are made contiguous first: the
        # elementwise ops (softplus above all) run several times faster than on the head's
        # interleaved columns, and agree with :meth:`_params` to float rounding
        if raw.shape[-1] % 3:
            raise ShapeError(f"studentt head: the last dimension {raw.shape[-1]} is not a multiple of 3 parameters")
        k = raw.shape[-1] // 3
        p = raw.unflatten(-1, (3, k)).movedim(-2, 0).contiguous()  # (3, ..., out): loc, scale, df
        loc, sp = p[0], F.softplus(p[1:])  # one call for scale and df
        sigma, nu = sp[0].add_(_MIN_SCALE), sp[1].add_(2.0)
        if scale is not None:
            loc, sigma = loc.mul_(scale), sigma.mul_(scale)
        chi2 = torch._standard_gamma(0.5 * nu, generator=generator).mul_(2.0).clamp_(min=torch.finfo(nu.dtype).tiny)
        return loc, _randn(loc, generator).mul_(torch.rsqrt(chi2.div_(nu))).mul_(sigma)


class _Normal(Likelihood):
    name = "normal"
    param_names = ("loc", "scale")
    spreads = True

    def _params(self, raw: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, sigma)`` in the series' units."""
        loc, s = self.split(raw)
        sigma = F.softplus(s) + _MIN_SCALE
        return (loc * scale, sigma * scale) if scale is not None else (loc, sigma)

    def distribution(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> D.Distribution:
        return D.Normal(*self._params(raw, scale), validate_args=False)

    def _offset(
        self, raw: torch.Tensor, scale: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, sigma = self._params(raw, scale)
        return loc, _randn(loc, generator).mul_(sigma)


class _NegBin(Likelihood):
    name = "negbin"
    param_names = ("total_count", "logits")

    def distribution(self, raw: torch.Tensor, scale: torch.Tensor | None = None) -> D.Distribution:
        r, logits = self.split(raw)
        if scale is not None:  # the mean total_count * exp(logits) scales by `scale`; counts stay counts
            logits = logits + torch.log(scale)
        return D.NegativeBinomial(F.softplus(r) + _MIN_SCALE, logits=logits, validate_args=False)

    def sample(
        self,
        raw: torch.Tensor,
        scale: torch.Tensor | None = None,
        spread: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if spread != 1.0:
            raise ConfigError(f"likelihood {self.name!r} has no scale parameter to spread; spread must be 1")
        # what D.NegativeBinomial.sample draws: a Poisson of a gamma rate
        d = self.distribution(raw, scale)
        rate = torch._standard_gamma(d.total_count, generator=generator) / torch.exp(-d.logits)
        return torch.poisson(rate.clamp_(min=torch.finfo(rate.dtype).tiny), generator=generator)

    def nll(self, raw: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if bool((y < 0).any()):
            raise ConfigError("likelihood 'negbin' models counts; the targets hold negative values")
        return super().nll(raw, y, scale)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normals shaped like ``like`` (what ``torch.randn_like`` draws, from ``generator``)."""
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


_FAMILIES: dict[str, Likelihood] = {c.name: c() for c in (_StudentT, _Normal, _NegBin)}


def get_likelihood(name: Any) -> Likelihood:
    """The :class:`Likelihood` for a ``likelihood=`` argument (see :func:`resolve_likelihood`)."""
    resolved = resolve_likelihood(name)
    if resolved is None:
        raise ConfigError("no likelihood asked for")
    return _FAMILIES[resolved]


def mean_scale(
    values: np.ndarray, *, minimum: float = 1e-10, default: float | None = None, axis: int = 0
) -> np.ndarray:
    """DeepAR's mean scaler: the mean absolute value of each column of ``values`` ``(steps, columns)``.

    A column whose mean is below ``minimum`` (all zeros) takes ``default``, else the mean of the
    other columns' scales, else 1 — so a silent series reads as zeros, not as NaN.

    >>> mean_scale(np.array([[1.0, 0.0], [-3.0, 0.0]])).tolist()
    [2.0, 2.0]
    """
    a = np.abs(np.asarray(values, dtype=np.float64))
    if a.size == 0:
        raise ShapeError("mean_scale: no values")
    s = a.mean(axis=axis)
    ok = s >= minimum
    fill = default if default is not None else (float(s[ok].mean()) if ok.any() else 1.0)
    return np.where(ok, s, fill)

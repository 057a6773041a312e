"""Probabilistic forecast metrics: CRPS, weighted quantile loss, MSIS, MASE, coverage.

Shapes: ``y`` is any ``(..., horizon)`` array of observations (one series per leading index);
``samples`` is ``(num_samples, *y.shape)`` (e.g. paths from :func:`hiddenstate.sample_paths`);
quantile forecasts are ``(len(quantiles), *y.shape)``; ``insample`` ``(..., steps)`` is each
series' history, for the seasonal scale of MSIS and MASE. All return floats.

- :func:`crps`: the sample CRPS ``E|X - y| - E|X - X'| / 2`` (as ``properscoring.crps_ensemble``),
  averaged; ``normalize=True`` divides the sum by ``sum |y|`` instead (a scaled CRPS).
- :func:`weighted_quantile_loss`: GluonTS's ``mean_wQuantileLoss``: for each level ``q``,
  ``2 * sum |(y - ŷ_q) * (1{y <= ŷ_q} - q)| / sum |y|``, averaged over ``q = 0.1 .. 0.9``. This is
  the "CRPS" that GluonTS and GIFT-Eval report.
- :func:`msis`: the mean scaled interval score at ``alpha = 0.05`` (the 95% interval), scaled by
  each series' seasonal naive error ``mean |y[t] - y[t - season]|`` over its history, per series
  and then averaged (as GluonTS does).
- :func:`mase`: the mean absolute error over the same seasonal scale, per series, averaged.
- :func:`coverage`: the share of observations inside ``[lo, hi]``.

The point metrics MSE/MAE/RMSE are :func:`point` (:func:`hiddenstate.forecast.metrics`).

>>> y = np.array([1.0, 2.0, 3.0])
>>> round(crps(np.stack([y, y + 1.0]), y), 4)       # two samples: |0| and |1| away, half a pair apart
0.25
>>> coverage(y - 1, y + 1, y), coverage(y + 1, y + 2, y)
(1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.forecast import metrics as point

__all__ = [
    "QUANTILES",
    "central_interval",
    "coverage",
    "crps",
    "mase",
    "msis",
    "point",
    "quantile_losses",
    "seasonal_error",
    "weighted_quantile_loss",
]

#: The levels of GluonTS's mean weighted quantile loss (and GIFT-Eval's CRPS).
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _array(a: Any, name: str) -> np.ndarray:
    out = np.asarray(a.detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if out.size == 0:
        raise ShapeError(f"{name}: no values")
    bad = ~np.isfinite(out)
    if bad.any():  # a score over a missing truth or a broken forecast would be quietly wrong
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ShapeError(f"{name}: {int(bad.sum())} values are NaN or inf (the first at index {at})")
    return out


def _same(name: str, a: np.ndarray, y: np.ndarray) -> None:
    if a.shape != y.shape:
        raise ShapeError(f"{name}: expected the shape of y {y.shape}, got {a.shape}")


def crps(samples: Any, y: Any, *, normalize: bool = False) -> float:
    """Sample CRPS of ``samples`` ``(num_samples, *y.shape)`` against ``y``: the mean over every
    element, or with ``normalize`` the sum over ``sum |y|``."""
    s, t = _array(samples, "samples"), _array(y, "y")
    if s.shape[1:] != t.shape:
        raise ShapeError(
            f"samples: expected (num_samples, *y.shape) = (num_samples, {', '.join(map(str, t.shape))}), got {s.shape}"
        )
    m = s.shape[0]
    first = np.abs(s - t).mean(axis=0)  # E|X - y|
    # E|X - X'| over all m^2 pairs from the sorted samples: (2 / m^2) * sum_i (2i - m - 1) x_(i)
    w = (2 * np.arange(1, m + 1) - m - 1).reshape(-1, *([1] * t.ndim))
    second = (2.0 / m**2) * (w * np.sort(s, axis=0)).sum(axis=0)
    per = first - 0.5 * second
    if normalize:
        return float(per.sum() / np.abs(t).sum())
    return float(per.mean())


def quantile_losses(q_pred: Any, y: Any, quantiles: Sequence[float] = QUANTILES) -> np.ndarray:
    """GluonTS's weighted quantile loss per level: ``(len(quantiles),)``."""
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or not ((q > 0) & (q < 1)).all():
        raise ConfigError(f"quantiles must be numbers in (0, 1), got {np.atleast_1d(q).tolist()}")
    p, t = _array(q_pred, "q_pred"), _array(y, "y")
    if p.shape != (len(q), *t.shape):
        raise ShapeError(f"q_pred: expected (len(quantiles)={len(q)}, *y.shape={t.shape}), got {p.shape}")
    qs = q.reshape(-1, *([1] * t.ndim))
    loss = np.abs((t - p) * ((t <= p) - qs)).reshape(len(q), -1).sum(axis=1)  # (n_quantiles,)
    return np.asarray(2 * loss / np.abs(t).sum())


def weighted_quantile_loss(q_pred: Any, y: Any, quantiles: Sequence[float] = QUANTILES) -> float:
    """The mean over ``quantiles`` of :func:`quantile_losses`; ``q_pred`` ``(len(quantiles), *y.shape)``,
    e.g. ``np.quantile(samples, QUANTILES, axis=0)``.

    >>> y = np.array([10.0, 20.0])
    >>> weighted_quantile_loss(np.array([[9.0, 18.0]]), y, [0.5])   # 2 * 0.5 * (1 + 2) / 30
    0.1
    """
    return float(quantile_losses(q_pred, y, quantiles).mean())


def seasonal_error(insample: Any, season: int = 1) -> np.ndarray:
    """``mean |x[t] - x[t - season]|`` over each series' history ``(..., steps)`` -> ``(...)``.

    A history shorter than ``season + 1`` falls back to ``season = 1``, as GluonTS does.
    """
    x = _array(insample, "insample")
    if isinstance(season, bool) or not isinstance(season, int) or season < 1:
        raise ConfigError(f"season must be an int >= 1, got {season!r}")
    if x.shape[-1] < 2:
        raise ShapeError(f"insample: needs at least 2 steps per series, got {x.shape[-1]}")
    m = season if x.shape[-1] > season else 1
    return np.asarray(np.abs(x[..., m:] - x[..., :-m]).mean(axis=-1))


def _scaled(per_step: np.ndarray, scale: np.ndarray) -> float:
    """Average ``per_step`` ``(..., horizon)`` per series, divide by each series' ``scale``, average."""
    try:
        np.broadcast_shapes(scale.shape, per_step.shape[:-1])
    except ValueError:
        raise ShapeError(
            f"insample: its series shape {scale.shape} (all but the steps axis) does not match y's "
            f"{per_step.shape[:-1]} (all but the horizon axis)"
        ) from None
    return float(np.mean(per_step.mean(axis=-1) / scale))


def msis(lo: Any, hi: Any, y: Any, insample: Any, season: int = 1, alpha: float = 0.05) -> float:
    """Mean scaled interval score of the ``[lo, hi]`` interval (``1 - alpha`` central) on ``y``.

    >>> y, past = np.array([[1.0, 5.0]]), np.array([[0.0, 1.0, 2.0]])   # seasonal error 1
    >>> msis(np.array([[0.0, 0.0]]), np.array([[2.0, 4.0]]), y, past, alpha=0.5)   # (2 + 4 + 4 * 1) / 2
    5.0
    """
    lo_, hi_, t = _array(lo, "lo"), _array(hi, "hi"), _array(y, "y")
    _same("lo", lo_, t)
    _same("hi", hi_, t)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    score = (hi_ - lo_) + (2 / alpha) * (lo_ - t) * (t < lo_) + (2 / alpha) * (t - hi_) * (t > hi_)
    return _scaled(score, seasonal_error(insample, season))


def mase(pred: Any, y: Any, insample: Any, season: int = 1) -> float:
    """Mean absolute scaled error of ``pred`` (e.g. the median) on ``y``, per series then averaged.

    >>> mase(np.array([[2.0, 2.0]]), np.array([[1.0, 4.0]]), np.array([[0.0, 2.0, 4.0]]))   # 1.5 / 2
    0.75
    """
    p, t = _array(pred, "pred"), _array(y, "y")
    _same("pred", p, t)
    return _scaled(np.abs(t - p), seasonal_error(insample, season))


def central_interval(level: float) -> tuple[float, float]:
    """The quantiles bounding the central ``level``% interval.

    >>> [round(q, 6) for q in central_interval(80)]
    [0.1, 0.9]
    """
    tail = (1 - level / 100) / 2
    return tail, 1 - tail


def coverage(lo: Any, hi: Any, y: Any) -> float:
    """The share of ``y`` inside ``[lo, hi]``."""
    lo_, hi_, t = _array(lo, "lo"), _array(hi, "hi"), _array(y, "y")
    _same("lo", lo_, t)
    _same("hi", hi_, t)
    return float(np.mean((t >= lo_) & (t <= hi_)))

"""The model as the service uses it: scaling, one step batch for many streams, forecasts.

A :class:`ServedModel` wraps a step-by-step model (``model(x, state) -> (y, State)``, such as
:class:`~hiddenstate.model.SequenceModel`) with its input scaler and column names. Streams are
stored as flat float32 rows, every tensor of ``State.to_dict()`` end to end::

    layers.0.h (8) | layers.0.c (8) | layers.1.h (16) | layers.1.c (16)     -> 48 floats per stream

:meth:`ServedModel.advance` runs a micro-batch whose streams bring different numbers of steps.
It groups the streams by step count and makes one model call per group, so no stream is ever
padded and each one's result is the model run on that stream alone: mixing step counts in
a batch changes nothing, bit for bit. (Across batch *sizes* the BLAS kernels may round the
last bit differently, as any batched inference does; see docs/serving.md.)

The semantics are the library's (:mod:`hiddenstate.forecast`): a model with a state encoder
(``state_encoder="cond:N"``) starts a stream from its first row and steps from the second, as
:func:`~hiddenstate.forecast.warm` does; a rollout feeds the predicted targets back in their
input columns and holds the other inputs.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.forecast import resolve_method, rollout, target_indices
from hiddenstate.state import LayerState, State, StateSpec

__all__ = ["FUSED_MAX_HIDDEN", "ServedModel"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A step-by-step model plus its scaling, as served; build it with :meth:`build` or :meth:`from_run`.

    ``scaler`` normalises the input columns (None: the data is used as is).

    >>> import hiddenstate as hs
    >>> m = ServedModel.build(hs.SequenceModel(2, 2, [hs.LSTM(3)]), None, ["a", "b"], ["a", "b"])
    >>> m.state_width, m.layout
    (6, (('layers.0.h', 3), ('layers.0.c', 3)))
    """

    model: Any  # an nn.Module with input_size, output_size, state_spec and initial_state
    spec: StateSpec
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    scaler: Any = None
    source: str = ""
    target_index: tuple[int, ...] | None = None
    layout: tuple[tuple[str, int], ...] = ()
    _target_scaler: Any = field(default=None, repr=False)
    _initial: torch.Tensor | None = field(default=None, repr=False)
    _shift: Any = field(default=None, repr=False)  # (mean, std) of the inputs when the scaler is standard

    @classmethod
    def build(
        cls,
        model: Any,
        scaler: Any,
        inputs: Sequence[str],
        targets: Sequence[str],
        *,
        source: str = "",
        backend: str = "auto",
    ) -> ServedModel:
        """Check that ``model`` advances step by step and wrap a copy of it (in eval mode, float32,
        CPU); ``model`` itself is left as it was.

        ``backend``: ``"torch"`` (the library's default), ``"fused"`` (the C kernel; ConfigError
        for a stack it cannot run) or ``"auto"``: fused where it was measured faster, see
        :func:`_serving_backend`. The ``HIDDENSTATE_SERVE_BACKEND`` variable overrides ``"auto"``.
        """
        if callable(getattr(model, "forecast", None)):
            kind = getattr(model, "kind", type(model).__name__)
            raise ConfigError(
                f"model kind {kind!r} forecasts from whole windows (it has its own forecast()); "
                "the streaming service advances a state one step at a time and serves step-by-step models"
            )
        for attr in ("input_size", "output_size", "state_spec", "initial_state"):
            if not hasattr(model, attr):
                raise ConfigError(
                    f"{type(model).__name__} cannot be served step by step: it has no {attr!r} "
                    "(the service serves models like SequenceModel: model(x, state) -> (y, State))"
                )
        inputs, targets = tuple(inputs), tuple(targets)
        if len(inputs) != model.input_size or len(targets) != model.output_size:
            raise ConfigError(
                f"the model takes {model.input_size} inputs and gives {model.output_size} targets, but the run "
                f"names {len(inputs)} input and {len(targets)} target columns"
            )
        if scaler is not None and scaler.n_columns != len(inputs):
            raise ConfigError(f"the scaler has {scaler.n_columns} columns for {len(inputs)} inputs")
        tidx = target_indices(inputs, targets)
        if scaler is None:
            tscaler = None
        elif tidx is not None:
            tscaler = scaler.select(list(tidx))
        else:
            raise ConfigError("a target is not among the inputs, so the run's input scaler cannot scale it back")
        model = copy.deepcopy(model).to("cpu", torch.float32).eval()  # the caller's model stays as it is
        _serving_backend(model, backend)
        spec: StateSpec = model.state_spec
        layout = tuple((f"layers.{i}.{t}", ls.hidden_size) for i, ls in enumerate(spec.layers) for t in ls.tensor_names)
        initial = None
        if not int(getattr(model, "cond_size", 0) or 0):
            with torch.inference_mode():
                initial = _flatten(model.initial_state(1))[0]  # (state_width,)
        shift = None
        if scaler is not None and isinstance(getattr(scaler, "mean", None), np.ndarray):
            shift = (np.asarray(scaler.mean, np.float64), np.asarray(scaler.std, np.float64))
        return cls(model, spec, inputs, targets, scaler, source, tidx, layout, tscaler, initial, shift)

    @classmethod
    def from_run(cls, run: Any, *, backend: str = "auto") -> ServedModel:
        """From a :class:`~hiddenstate.runs.Run` (``load_run(path)``); ``run.model`` is not changed."""
        source = str(getattr(run, "path", ""))
        return cls.build(run.model, run.scaler, run.inputs, run.targets, source=source, backend=backend)

    @property
    def backend(self) -> str:
        """The backend the served copy runs on: ``"torch"`` or ``"fused"``."""
        return str(getattr(getattr(self.model, "rnn", None), "backend", "torch"))

    # -- sizes and layout -------------------------------------------------------------------------

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def state_width(self) -> int:
        """Floats per stream in the flat layout."""
        return sum(width for _, width in self.layout)

    @property
    def cond_size(self) -> int:
        """Rows a new stream spends on its initial state: 1 for a state-encoder model, else 0."""
        return 1 if self._initial is None else 0

    @property
    def input_bound(self) -> float:
        """The largest magnitude of an input value (original units) that stays within float32 once
        normalised, in every column; the service refuses larger ones."""
        if self._shift is None:
            return _FLOAT32_MAX
        mean, std = self._shift
        return float(np.min(_FLOAT32_MAX * std - np.abs(mean)))

    def to_state(self, flat: torch.Tensor) -> State:
        """``(batch, state_width)`` float32 rows to a State (trusted: these rows came from the model)."""
        layers, at = [], 0
        for ls in self.spec.layers:
            h = flat[:, at : at + ls.hidden_size]
            at += ls.hidden_size
            c = None
            if ls.has_c:
                c = flat[:, at : at + ls.hidden_size]
                at += ls.hidden_size
            layers.append(LayerState(h.contiguous(), None if c is None else c.contiguous()))
        return State._trusted(self.spec, layers)

    def to_flat(self, state: State) -> torch.Tensor:
        """A State to ``(batch, state_width)`` float32 rows."""
        return _flatten(state)

    def to_bytes(self, flat_row: np.ndarray) -> bytes:
        return np.ascontiguousarray(flat_row, dtype="<f4").tobytes()

    def from_bytes(self, blobs: Sequence[bytes]) -> torch.Tensor:
        """Stored rows to ``(len(blobs), state_width)``; refuses a row of the wrong length."""
        width = self.state_width * 4
        wrong = set(map(len, blobs)) - {width}
        if wrong:
            raise ConfigError(
                f"a stored state has {min(wrong)} bytes but spec {self.spec.describe()} needs {width}; "
                "the store holds states of another model"
            )
        flat = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.state_width)
        return torch.from_numpy(flat.copy())  # (len(blobs), state_width)

    def state_lists(self, blob: bytes) -> dict[str, list[list[float]]]:
        """One stored state as ``{"layers.0.h": [[...]], ...}`` (numpy only: safe in any thread)."""
        row = self.from_bytes([blob]).numpy()[0]
        out, at = {}, 0
        for name, width in self.layout:
            out[name] = [row[at : at + width].tolist()]
            at += width
        return out

    # -- units --------------------------------------------------------------------------------------

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """``(..., n_inputs)`` original units (float64) to normalised float32."""
        if self._shift is not None:  # StandardScaler.transform's arithmetic, without its per-call checks
            mean, std = self._shift
            x = (values - mean) / std
        else:
            x = np.asarray(values if self.scaler is None else self.scaler.transform(values), dtype=np.float64)
        if np.abs(x).max(initial=0.0) <= _FLOAT32_MAX:
            return x.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf here, refused by the caller
            return x.astype(np.float32)

    def targets_original(self, y_norm: np.ndarray) -> np.ndarray:
        """``(..., n_targets)`` normalised predictions to original units (float64)."""
        y = np.asarray(y_norm, dtype=np.float64)
        return y if self._target_scaler is None else np.asarray(self._target_scaler.inverse_transform(y))

    # -- compute ----------------------------------------------------------------------------------

    def advance(
        self, starts: torch.Tensor, fresh: np.ndarray, xs: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance many streams through their own steps; one model call per step count.

        ``starts`` ``(batch, state_width)`` holds each stream's state (ignored where ``fresh``);
        ``xs[i]`` is stream i's normalised rows ``(steps_i, n_inputs)``. A fresh stream starts
        from the model's initial state; a state-encoder model uses its first row as ``cond``.
        Returns the new states ``(batch, state_width)`` and the last step's predictions
        ``(batch, n_targets)``, normalised.
        """
        batch = len(xs)
        rows = list(xs)
        start = starts.clone()
        fresh_rows = np.flatnonzero(fresh)
        with torch.inference_mode():
            if fresh_rows.size:
                if self._initial is not None:
                    start[torch.from_numpy(fresh_rows)] = self._initial
                else:  # a state-encoder model: the first row is cond, stepping starts at the second
                    cond = torch.from_numpy(np.stack([rows[i][0] for i in fresh_rows]))  # (n_fresh, n_in)
                    start[torch.from_numpy(fresh_rows)] = _flatten(self.model.initial_state(len(fresh_rows), cond))
                    for i in fresh_rows.tolist():
                        rows[i] = rows[i][1:]
            steps = np.fromiter(map(len, rows), dtype=np.int64, count=batch)
            if batch and (steps == 0).any():
                raise ShapeError("advance: a stream has no step to run after its cond row")
            if batch and (steps == steps[0]).all():  # the usual case: one call, no gathering
                y, state = self.model(torch.from_numpy(np.stack(rows)), self.to_state(start))
                return _flatten(state), self._point(y[:, -1] if y.dim() == 3 else y)  # 2-D: a last-step model
            groups: dict[int, list[int]] = defaultdict(list)
            for i, count in enumerate(steps.tolist()):
                groups[count].append(i)
            new = torch.empty(batch, self.state_width)
            preds = torch.empty(batch, self.n_targets)
            for members in groups.values():
                index = torch.tensor(members)
                x = torch.from_numpy(np.stack([rows[i] for i in members]))  # (n, steps, n_in)
                y, state = self.model(x, self.to_state(start[index]))  # y: (n, steps, n_out)
                new[index] = _flatten(state)
                preds[index] = self._point(y[:, -1] if y.dim() == 3 else y)
        return new, preds

    def forecast_method(self, horizon: int) -> str:
        """``"direct"`` or ``"rollout"`` for ``horizon`` (as ``forecast(method="auto")`` picks), or raise."""
        return resolve_method(self.model, "auto", horizon, self.target_index)

    def forecast(self, states: torch.Tensor, tails: torch.Tensor, horizon: int) -> torch.Tensor:
        """``(batch, horizon, n_targets)`` normalised, from stored states and tails.

        A tail is the last observed row and the prediction made from it, ``(batch, n_in + n_out)``.
        The rollout's first step is that stored prediction; it continues from there with the
        state that has seen the last row, exactly as :func:`hiddenstate.forecast.forecast` does
        from the whole history.
        """
        with torch.inference_mode():
            if self.forecast_method(horizon) == "direct":
                return self.model.forecast_direct(self.to_state(states))[:, :horizon]
            last, first = tails[:, : self.n_inputs], tails[:, self.n_inputs :]  # (batch, n_in), (batch, n_out)
            if horizon == 1:
                return first.unsqueeze(1)
            index = torch.tensor(self.target_index if self.target_index is not None else range(self.n_inputs))
            nxt = last.index_copy(1, index, first)  # the prediction fed back, other inputs held
            rest = rollout(self.model, self.to_state(states), nxt, horizon - 1, target_index=self.target_index)
            return torch.cat([first.unsqueeze(1), rest], dim=1)

    def sample(self, states: torch.Tensor, tails: torch.Tensor, horizon: int, num_samples: int, seed: Any) -> Any:
        """Sample paths ``(num_samples, batch, horizon, n_targets)`` normalised, from stored states
        (which have read the tail's last row) of a likelihood model."""
        from hiddenstate.paths import sample_paths

        last = tails[:, : self.n_inputs]  # (batch, n_in)
        index = self.target_index if self.target_index is not None else range(self.n_inputs)
        return sample_paths(
            self.model, self.to_state(states), last, horizon, num_samples, seed, target_index=index, seen_last=True
        )

    @property
    def likelihood(self) -> Any:
        return getattr(self.model, "likelihood", None)

    def _point(self, y: torch.Tensor) -> torch.Tensor:
        """A step's prediction: the output, or a likelihood head's mean."""
        return y if self.likelihood is None else self.likelihood.mean(y)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` shows."""
        config = self.model.config() if callable(getattr(self.model, "config", None)) else {}
        return {
            "source": self.source,
            "kind": config.get("kind", type(self.model).__name__),
            "config": config,
            "inputs": list(self.inputs),
            "targets": list(self.targets),
            "spec": self.spec.to_json(),
            "fingerprint": self.spec.fingerprint(),
            "state_names": [name for name, _ in self.layout],
            "state_width": self.state_width,
            "cond_rows": self.cond_size,
            "direct_horizon": int(getattr(self.model, "horizon", 0) or 0),
            "scaler": None if self.scaler is None else self.scaler.to_json(),
        }


def _flatten(state: State) -> torch.Tensor:
    return torch.cat([t.to(torch.float32) for t in state.tensors()], dim=1)  # (batch, state_width)


# The widest LSTM layer for which "auto" serves on the fused kernel. benchmarks/serve_backend.py
# (2026-12-01, 2-core x86_64, load ~5, so noisy): one step of two LSTM layers, fused vs default,
# 1.65-2.07x for hidden 8-32 and 1 or 16 streams (0.68-2.15x at 256 streams); 1.08x at hidden 64
# for 1-16 streams and 0.82x at 256; 0.55-0.66x at hidden 128.
FUSED_MAX_HIDDEN = 32


def _serving_backend(model: Any, backend: str) -> None:
    """Put the served copy on ``backend``; ``"auto"``: the fused CPU kernel for an all-LSTM stack
    no wider than :data:`FUSED_MAX_HIDDEN` when it builds (a step of a few streams is dominated by
    oneDNN's per-call setup, which the fused kernel does not have; same results to float32
    rounding), else the default. No C compiler, or another stack, keeps the default."""
    if backend == "auto":
        backend = os.environ.get("HIDDENSTATE_SERVE_BACKEND", "auto")
    if backend not in ("auto", "torch", "fused"):
        raise ConfigError(f"unknown serving backend {backend!r}; expected 'auto', 'torch' or 'fused'")
    rnn: Any = getattr(model, "rnn", None)
    if not hasattr(rnn, "set_backend"):
        if backend == "fused":
            raise ConfigError(f"{type(model).__name__} has no backend to choose; serve it with backend 'torch'")
        return
    if backend != "auto":
        rnn.set_backend(backend)
        return
    spec: StateSpec = model.state_spec
    if any(ls.cell != "lstm" or ls.hidden_size > FUSED_MAX_HIDDEN for ls in spec.layers):
        return
    try:
        rnn.set_backend("fused")
    except ConfigError:
        pass

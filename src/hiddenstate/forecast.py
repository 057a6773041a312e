"""Forecasting: warm the state through a history, then produce a horizon.

Two ways to produce the horizon, both from the same warmed state::

    history  x[0] x[1] ... x[T-2] | x[T-1]          future  y[T] y[T+1] ... y[T+H-1]
             └─ warm: state ──────┘
    rollout:  state, x[T-1] ──> y[T]; feed y[T] back in place of the target columns ──> y[T+1] ...
    direct:   state after x[T-1] ──> model.forecast_direct(state) ──> y[T .. T+H-1] at once

The model predicts the next step (``y[t+1]`` from ``x[t]``), as it was trained. In a rollout the
predicted targets replace their input columns; the other inputs are held at their last value. A
model with its own ``forecast(history_norm, horizon)`` (a registered model kind) is used as is.

Everything here works in normalised units; :func:`forecast_original` wraps a run (model plus
scaler) for original units, which is what ``Run.forecast`` and the command line call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.state import State

__all__ = [
    "METHODS",
    "Evaluation",
    "backtest",
    "evaluate_forecasts",
    "fit_direct_head",
    "forecast",
    "forecast_original",
    "metrics",
    "repeat_last",
    "resolve_method",
    "rollout",
    "target_indices",
    "warm",
]

METHODS = ("auto", "rollout", "direct")

#: A model: a SequenceModel or any registered model kind (an ``nn.Module``), used by duck typing.
Model = Any


class RunLike(Protocol):
    """What :func:`forecast_original` needs from a run: a model, its input scaler and column names."""

    model: Model
    scaler: Any
    inputs: Sequence[str]
    targets: Sequence[str]


def _param(model: Model) -> torch.Tensor:
    return next(model.parameters())


def _as_tensor(x: Any, model: Model) -> torch.Tensor:
    p = _param(model)
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(p.device, p.dtype)


def _encoder_size(model: Model) -> int:
    return int(getattr(model, "cond_size", 0) or 0)


def target_indices(inputs: Sequence[str], targets: Sequence[str]) -> tuple[int, ...] | None:
    """Where each target sits among the inputs, or None when some target is not an input.

    >>> target_indices(["OT", "HUFL"], ["OT"]), target_indices(["HUFL"], ["OT"])
    ((0,), None)
    """
    if all(t in inputs for t in targets):
        return tuple(list(inputs).index(t) for t in targets)
    return None


def _feedback_index(run: RunLike) -> tuple[int, ...]:
    """The run's targets among its inputs, or ``()``: the columns are known, and some target is
    not an input, so nothing can be fed back (even when the sizes happen to match)."""
    tidx = target_indices(run.inputs, run.targets)
    return tidx if tidx is not None else ()


def warm(model: Model, x_norm: torch.Tensor, state: State | None = None, *, cond: torch.Tensor | None = None) -> State:
    """Run ``x_norm`` ``(batch, steps, n_in)`` through ``model`` without gradients; the final State.

    With ``state`` None the model's initial state is used. A model that sets its state from the
    previous true values (``state_encoder="cond:N"``) needs ``cond`` ``(batch, n_in)``; when it is
    not given, the first history row serves as ``cond`` and the warm-up starts at the second row,
    which is how such a model is trained. ``steps`` may be 0 when a state is given.
    """
    x = _as_tensor(x_norm, model)
    if x.dim() != 3:
        raise ShapeError(f"x_norm: expected shape (batch, steps, n_in), got {tuple(x.shape)}")
    with torch.no_grad():
        if state is None:
            if _encoder_size(model) and cond is None:
                if x.shape[1] < 1:
                    raise ShapeError("warm: a model with a state encoder needs at least one history row as cond")
                cond, x = x[:, 0], x[:, 1:]  # cond: (batch, n_in)
            c = _as_tensor(cond, model) if cond is not None else None
            state = model.initial_state(x.shape[0], c) if hasattr(model, "initial_state") else None
        if x.shape[1] == 0:
            if state is None:
                raise ShapeError("warm: no history rows and no state to start from")
            return state
        _, state = model(x, state)
    return state


def rollout(
    model: Model,
    state: State,
    last_x_norm: torch.Tensor,
    horizon: int,
    *,
    target_index: Sequence[int] | None = None,
) -> torch.Tensor:
    """Autoregressive forecast ``(batch, horizon, n_out)`` in normalised units.

    ``state`` has seen every row *before* ``last_x_norm`` ``(batch, n_in)``, the last observed
    row. Each step feeds one row and reads the next-step prediction; the predicted targets go
    back in at ``target_index`` (their columns among the inputs; None means the targets are the
    inputs, in order) and the other inputs stay at their last value.
    """
    if horizon < 1:
        raise ConfigError(f"horizon must be at least 1, got {horizon}")
    n_in, n_out = int(model.input_size), int(model.output_size)
    if target_index is None:
        if n_in != n_out:
            raise ConfigError(
                f"rollout feeds predictions back as inputs, but the model has {n_out} targets and {n_in} "
                "inputs and no target columns were given; pass target_index or use method='direct'"
            )
        target_index = tuple(range(n_in))
    index = torch.as_tensor(list(target_index), dtype=torch.long)
    if index.numel() != n_out:
        raise ConfigError(f"target_index names {index.numel()} columns but the model has {n_out} targets")
    x = _as_tensor(last_x_norm, model)
    if x.dim() != 2 or x.shape[1] != n_in:
        raise ShapeError(f"last_x_norm: expected shape (batch, n_in={n_in}), got {tuple(x.shape)}")
    index = index.to(x.device)
    preds = []
    with torch.no_grad():
        for _ in range(horizon):
            y, state = model(x.unsqueeze(1), state)  # y: (batch, 1, n_out)
            step = y[:, 0] if y.dim() == 3 else y  # (batch, n_out); 2-D from a last-step model
            if getattr(model, "likelihood", None) is not None:  # a likelihood head's parameters: feed its mean back
                step = model.likelihood.mean(step)
            preds.append(step)
            x = x.index_copy(1, index, step)  # targets fed back, other inputs held
    return torch.stack(preds, dim=1)  # (batch, horizon, n_out)


def resolve_method(model: Model, method: str, horizon: int, target_index: Sequence[int] | None) -> str:
    """Pick ``"own"``, ``"direct"`` or ``"rollout"`` for ``method`` (``"auto"`` picks the first that fits)."""
    if method not in METHODS:
        raise ConfigError(f"unknown forecast method {method!r}; expected one of {', '.join(METHODS)}")
    if callable(getattr(model, "forecast", None)):
        return "own"  # a model kind with its own forecasting logic knows best
    model_h = int(getattr(model, "horizon", 0) or 0)
    has_direct = getattr(model, "direct_head", None) is not None and model_h > 0
    # target_index None: the targets are the inputs, in order (when the sizes allow); an empty
    # or short target_index: some target is not an input, so nothing can be fed back
    n_out = int(model.output_size)
    if target_index is None:
        can_roll = int(model.input_size) == n_out
    else:
        can_roll = len(target_index) == n_out
    if method == "direct":
        if not has_direct:
            raise ConfigError("method 'direct' needs a model with a direct head; train it with --horizon H")
        if horizon > model_h:
            raise ConfigError(f"the direct head forecasts {model_h} steps, but horizon {horizon} was asked")
        return "direct"
    if method == "rollout":
        if not can_roll:
            raise ConfigError(
                "rollout needs every target among the inputs, to feed predictions back; "
                "add the targets to the inputs or use method='direct' (train with --horizon H)"
            )
        return "rollout"
    if has_direct and horizon <= model_h:
        return "direct"
    if can_roll:
        return "rollout"
    raise ConfigError(
        f"cannot forecast {horizon} steps: a target is not an input (so no rollout) and the model's direct "
        f"head covers {model_h} steps; train with --horizon {horizon}"
    )


def forecast(
    model: Model,
    history_norm: torch.Tensor | np.ndarray,
    horizon: int,
    method: str = "auto",
    *,
    target_index: Sequence[int] | None = None,
) -> torch.Tensor:
    """Forecast ``(batch, horizon, n_out)`` from ``history_norm`` ``(batch, steps, n_in)``, normalised.

    ``method``: ``"rollout"`` (outputs fed back), ``"direct"`` (the model's multi-step head) or
    ``"auto"`` (the model's own ``forecast`` if it has one, else the direct head when it covers
    the horizon, else rollout).

    >>> import hiddenstate as hs
    >>> _ = torch.manual_seed(0)
    >>> m = hs.SequenceModel(2, 2, [hs.LSTM(8)], horizon=4)
    >>> tuple(forecast(m, torch.zeros(3, 10, 2), 4, "rollout").shape)
    (3, 4, 2)
    """
    x = _as_tensor(history_norm, model)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    n_in = getattr(model, "input_size", x.shape[-1])
    if x.dim() != 3 or x.shape[2] != n_in:
        raise ShapeError(f"history: expected shape (batch, steps, n_in={n_in}), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ShapeError("history: needs at least one step")
    chosen = resolve_method(model, method, horizon, target_index)
    was_training = model.training
    model.eval()
    try:
        if chosen == "own":
            with torch.no_grad():
                return model.forecast(x, horizon)  # type: ignore[no-any-return]
        if chosen == "direct":
            state = warm(model, x)
            with torch.no_grad():
                return model.forecast_direct(state)[:, :horizon]
        if _encoder_size(model) and x.shape[1] < 2:
            raise ShapeError("history: a model with a state encoder needs at least 2 steps to roll out")
        state = warm(model, x[:, :-1])
        return rollout(model, state, x[:, -1], horizon, target_index=target_index)
    finally:
        model.train(was_training)


def _target_scaler(run: RunLike, tidx: Sequence[int]) -> Any:
    own = getattr(run, "target_scaler", None)
    if own is not None:
        return own
    if len(tidx) != len(run.targets):
        raise ConfigError("a target is not among the inputs and the run has no target scaler to scale it back")
    return run.scaler.select(list(tidx))


def forecast_original(run: RunLike, history: Any, horizon: int, method: str = "auto") -> np.ndarray:
    """Forecast ``(batch, horizon, n_targets)`` in original units from ``history`` in original units.

    ``history`` is ``(steps, n_inputs)`` or ``(batch, steps, n_inputs)`` with the run's input
    columns in order; ``run`` has ``.model``, ``.scaler`` (fitted on the inputs), ``.inputs`` and
    ``.targets``. This is what ``Run.forecast`` calls.
    """
    h = np.asarray(history.detach().cpu() if isinstance(history, torch.Tensor) else history, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    n_in = len(run.inputs)
    if h.ndim != 3 or h.shape[2] != n_in:
        raise ShapeError(f"history: expected shape (steps, {n_in}) or (batch, steps, {n_in}), got {h.shape}")
    tidx = _feedback_index(run)
    x = run.scaler.transform(h)  # (batch, steps, n_inputs) normalised
    pred = forecast(run.model, x, horizon, method, target_index=tidx)  # (batch, horizon, n_targets)
    return np.asarray(_target_scaler(run, tidx).inverse_transform(pred.detach().cpu().double().numpy()))


def backtest(
    model: Model,
    inputs_norm: np.ndarray,
    targets_norm: np.ndarray,
    horizon: int,
    origins: Sequence[int],
    method: str = "auto",
    *,
    target_index: Sequence[int] | None = None,
    lookback: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forecast from many origins of one series; returns ``(pred, true)``, each ``(n_origins, horizon, n_out)``.

    ``inputs_norm`` ``(steps, n_in)`` and ``targets_norm`` ``(steps, n_out)``; at origin ``o`` the
    rows ``0..o`` are known and rows ``o+1..o+horizon`` are forecast (origins come back sorted).

    With ``lookback`` None the state is *carried*: the series runs once, in chunks between the
    origins, so the state at each origin has seen the whole prefix (how a ``"carry"`` model was
    trained and is served). With ``lookback=L`` each origin is warmed from the initial state over
    its last ``L + 1`` rows only (for models trained with ``"encode"`` or ``"zeros"``, which never
    carried a state further than one chunk). Either way every origin then forecasts in one batch.
    """
    xs = _as_tensor(inputs_norm, model)  # (steps, n_in)
    ys = np.asarray(targets_norm, dtype=np.float64)
    origins = sorted(int(o) for o in origins)
    if not origins:
        raise ConfigError("backtest: no forecast origins")
    first = lookback if lookback is not None else (1 if _encoder_size(model) else 0)
    if origins[0] < first or origins[-1] + horizon >= xs.shape[0]:
        raise ConfigError(
            f"backtest: origins must lie in [{first}, {xs.shape[0] - horizon - 1}] for {xs.shape[0]} steps and "
            f"horizon {horizon}, got {origins[0]}..{origins[-1]}"
        )
    chosen = resolve_method(model, method, horizon, target_index)
    if lookback is not None:
        windows = torch.stack([xs[o - lookback : o + 1] for o in origins])  # (n_origins, lookback+1, n_in)
        pred = forecast(model, windows, horizon, method, target_index=target_index)
    elif chosen == "own":
        with torch.no_grad():
            pred = torch.cat([model.forecast(xs[None, : o + 1], horizon) for o in origins])
    else:
        was_training = model.training
        model.eval()
        try:
            pos = 1 if _encoder_size(model) else 0  # an encoder model takes row 0 as cond
            state = warm(model, xs[None, :pos])
            befores = []
            for o in origins:  # one pass; the state before each origin's row
                if o > pos:
                    state = warm(model, xs[None, pos:o], state)
                    pos = o
                befores.append(state)
            before = State.cat(befores)  # (n_origins, hidden_i) per layer
            last = xs[origins]  # (n_origins, n_in)
            if chosen == "direct":
                after = warm(model, last.unsqueeze(1), before)
                with torch.no_grad():
                    pred = model.forecast_direct(after)[:, :horizon]
            else:
                pred = rollout(model, before, last, horizon, target_index=target_index)
        finally:
            model.train(was_training)
    true = np.stack([ys[o + 1 : o + 1 + horizon] for o in origins])  # (n_origins, horizon, n_out)
    return pred.detach().cpu().double().numpy(), true


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of a run's forecasts next to the repeat-last-value baseline.

    ``model`` and ``baseline`` map ``"normalised"`` and ``"original"`` to :func:`metrics` dicts.
    ``sample`` holds one forecast for plotting, in original units: ``history`` ``(warmup, n_out)``,
    ``truth``, ``pred`` and ``baseline`` ``(horizon, n_out)``, and ``series`` and ``origin``, the
    series and row (the last one read) of that forecast.
    """

    horizon: int
    method: str
    origins: int
    model: dict[str, dict[str, float]]
    baseline: dict[str, dict[str, float]]
    sample: dict[str, np.ndarray] = field(repr=False)

    @property
    def beats_baseline(self) -> bool:
        """True when the model's MSE (normalised units) is below the baseline's."""
        return self.model["normalised"]["mse"] < self.baseline["normalised"]["mse"]

    def to_json(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "method": self.method,
            "origins": self.origins,
            "model": self.model,
            "repeat_last": self.baseline,
            "beats_repeat_last": self.beats_baseline,
        }


def evaluate_forecasts(
    run: RunLike,
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    regions: Sequence[tuple[int, int]],
    horizon: int,
    method: str = "auto",
    *,
    max_origins: int = 256,
    lookback: int | None = None,
) -> Evaluation:
    """Backtest a run on the ``regions`` (``(start, stop)`` rows, e.g. the test split) of each series.

    ``inputs[i]`` ``(steps, n_in)`` and ``targets[i]`` ``(steps, n_out)`` are whole series in
    original units, so a carried state (``lookback`` None) warms through everything before the
    region. Each region gets evenly spaced origins whose horizon lies inside it, at most
    ``max_origins`` over all series. Metrics come on both scales, next to repeat-last.
    """
    tidx = _feedback_index(run)
    chosen = resolve_method(run.model, method, horizon, tidx)
    tscaler = _target_scaler(run, tidx)
    spans = []
    for x, (start, stop) in zip(inputs, regions, strict=True):
        lo = max(start - 1, lookback or 0, 1 if _encoder_size(run.model) else 0)
        spans.append((lo, min(stop, x.shape[0]) - horizon - 1))
    total = sum(max(0, hi - lo + 1) for lo, hi in spans)
    if total == 0:
        shortest = min(stop - start for start, stop in regions)
        raise ConfigError(
            f"the test split has {shortest} rows per series, too few to score a horizon of {horizon}; "
            "use a shorter horizon or a larger test split"
        )
    stride = max(1, -(-total // max_origins))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("pred_n", "true_n", "base_n", "pred", "true", "base")}
    sample: dict[str, np.ndarray] = {}
    for i, (x, y, (lo, hi)) in enumerate(zip(inputs, targets, spans, strict=True)):
        if hi < lo:
            continue
        origins = list(range(lo, hi + 1, stride))
        x_n, y_n = run.scaler.transform(np.asarray(x, np.float64)), tscaler.transform(np.asarray(y, np.float64))
        pred_n, true_n = backtest(
            run.model,
            x_n,
            y_n,
            horizon,
            origins,
            chosen if chosen != "own" else method,
            target_index=tidx,
            lookback=lookback,
        )
        pred = tscaler.inverse_transform(pred_n)
        true = np.stack([y[o + 1 : o + 1 + horizon] for o in origins])  # (n_origins, horizon, n_out)
        base = repeat_last(y, origins, horizon)
        for k, v in zip(parts, (pred_n, true_n, repeat_last(y_n, origins, horizon), pred, true, base), strict=True):
            parts[k].append(v)
        if not sample:
            mid = len(origins) // 2
            o = origins[mid]
            sample = {
                "history": np.asarray(y[max(0, o + 1 - 2 * horizon) : o + 1], np.float64),
                "truth": true[mid],
                "pred": pred[mid],
                "baseline": base[mid],
                "series": np.asarray(i),  # which series and row the origin is, for the bands of a likelihood model
                "origin": np.asarray(o),
            }
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Evaluation(
        horizon=horizon,
        method=chosen,
        origins=int(cat["pred"].shape[0]),
        model={"normalised": metrics(cat["pred_n"], cat["true_n"]), "original": metrics(cat["pred"], cat["true"])},
        baseline={"normalised": metrics(cat["base_n"], cat["true_n"]), "original": metrics(cat["base"], cat["true"])},
        sample=sample,
    )


def fit_direct_head(
    model: Model,
    inputs_norm: Sequence[np.ndarray],
    targets_norm: Sequence[np.ndarray],
    *,
    ridge: float = 1e-3,
    max_rows: int = 50_000,
) -> int:
    """Fit ``model.direct_head`` by ridge regression on the frozen recurrent stack; returns the rows used.

    The Trainer trains next-step outputs only. The direct head maps the final top-layer ``h``
    to the next ``horizon`` targets, so once the stack is trained the best linear head is a
    least-squares problem: run each series through the stack once (state carried from the
    initial state), pair ``h`` after row ``t`` with targets ``t+1 .. t+horizon``, and solve::

        W = (Hᵀ H + λ I)⁻¹ Hᵀ Y      H: (rows, hidden_last + 1)   Y: (rows, horizon * n_out)

    ``λ`` is ``ridge`` times the mean diagonal of ``HᵀH``. Rows are thinned evenly to at most
    ``max_rows``. Deterministic, no gradients, a second or so on a CPU.
    """
    head = getattr(model, "direct_head", None)
    horizon = int(getattr(model, "horizon", 0) or 0)
    if head is None or horizon < 1:
        raise ConfigError("fit_direct_head: the model has no direct head; build it with horizon=H > 0")
    feats, outs = [], []
    offset = 1 if _encoder_size(model) else 0
    with torch.no_grad():
        for x, y in zip(inputs_norm, targets_norm, strict=True):
            n = len(x)
            if n - horizon - offset < 1:
                continue
            xt = _as_tensor(x, model).unsqueeze(0)  # (1, steps, n_in)
            cond = xt[:, 0] if offset else None
            state = model.initial_state(1, cond)
            h_seq, _ = model.rnn(xt[:, offset:], state)  # (1, steps - offset, hidden_last)
            rows = n - horizon - offset  # h after rows offset .. n-horizon-1
            feats.append(h_seq[0, :rows].double().cpu().numpy())
            win = np.lib.stride_tricks.sliding_window_view(np.asarray(y, np.float64)[offset + 1 :], horizon, axis=0)
            outs.append(win[:rows].transpose(0, 2, 1).reshape(rows, -1))  # (rows, horizon * n_out)
    if not feats:
        raise ConfigError(f"fit_direct_head: no series is longer than the horizon {horizon} + 1")
    h_all, y_all = np.concatenate(feats), np.concatenate(outs)
    keep = np.linspace(0, len(h_all) - 1, min(len(h_all), max_rows)).round().astype(int)
    h_all, y_all = h_all[keep], y_all[keep]
    design = np.hstack([h_all, np.ones((len(h_all), 1))])  # (rows, hidden_last + 1)
    gram = design.T @ design
    lam = ridge * float(np.mean(np.diag(gram)))
    reg = np.eye(gram.shape[0]) * lam
    reg[-1, -1] = 0.0  # the bias is not shrunk
    w = np.linalg.solve(gram + reg, design.T @ y_all)  # (hidden_last + 1, horizon * n_out)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[:-1].T))
        head.bias.copy_(torch.from_numpy(w[-1]))
    return len(h_all)


def metrics(pred: Any, true: Any) -> dict[str, float]:
    """MSE, MAE and RMSE over every element of ``pred`` and ``true`` (numpy or torch, same shape).

    >>> metrics(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 0.0]))
    {'mse': 6.666666666666667, 'mae': 2.0, 'rmse': 2.581988897471611}
    """
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    t = np.asarray(true.detach().cpu() if isinstance(true, torch.Tensor) else true, dtype=np.float64)
    if p.shape != t.shape:
        raise ShapeError(f"metrics: pred has shape {p.shape} but true has shape {t.shape}")
    if p.size == 0:
        raise ShapeError("metrics: no values to compare")
    err = p - t
    mse = float(np.mean(err**2))
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(mse))}


def repeat_last(targets: np.ndarray, origins: Sequence[int], horizon: int) -> np.ndarray:
    """The naive baseline: each origin's last observed target repeated, ``(n_origins, horizon, n_out)``.

    >>> repeat_last(np.array([[1.0], [2.0], [3.0]]), [1], 2)[0, :, 0]
    array([2., 2.])
    """
    last = np.asarray(targets, dtype=np.float64)[sorted(int(o) for o in origins)]  # (n_origins, n_out)
    return np.repeat(last[:, None, :], horizon, axis=1)

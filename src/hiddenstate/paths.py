"""Ancestral sample paths from the carried state: each path is fed its own draws.

A likelihood model (``SequenceModel(..., likelihood=...)``) gives the distribution of the next
step. :func:`sample_paths` copies each row's state ``num_samples`` times and runs ``horizon``
recurrent steps over all samples x rows at once; every path draws its next value and feeds that
draw back, so the state of path ``s`` carries path ``s``'s own past::

    state (batch)  --repeat-->  (num_samples * batch)
    step 1: last ------------------> dist_1 --draw--> z_1[s]
    step 2: z_1[s] (fed back) -----> dist_2 --draw--> z_2[s]      per path, not per mean
    ...

The history is never re-read: the cost is ``horizon`` steps of ``num_samples * batch`` rows.
Feeding the mean back instead (as some libraries do) gives marginals around one mean path;
consecutive steps of such "paths" are independent given the mean, which true paths are not.

Quantiles and means come from the paths (:func:`path_quantiles`).

>>> import hiddenstate as hs
>>> _ = torch.manual_seed(0)
>>> m = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal")
>>> state = hs.State.zeros(m.state_spec, 3)
>>> p = sample_paths(m, state, torch.zeros(3, 1), horizon=5, num_samples=10, seed=1)
>>> tuple(p.shape), bool((p == sample_paths(m, state, torch.zeros(3, 1), 5, 10, seed=1)).all())
((10, 3, 5, 1), True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hiddenstate._kernels.torch import hx_for_layers, rnn_kernel
from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.state import State

__all__ = ["path_quantiles", "sample_paths"]


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device`` (None: torch's global generator, which a seed
    leaves as it was). It gives the same random numbers as ``torch.manual_seed(seed)`` would."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def sample_paths(
    model: Any,
    state: State,
    last: torch.Tensor | np.ndarray,
    horizon: int,
    num_samples: int = 100,
    seed: int | None = None,
    *,
    scale: torch.Tensor | np.ndarray | None = None,
    target_index: Sequence[int] | None = None,
    ahead: torch.Tensor | np.ndarray | None = None,
    seen_last: bool = False,
    lagged: Sequence[tuple[int, int, int]] = (),
    spread: float = 1.0,
) -> torch.Tensor:
    """Sample paths ``(num_samples, batch, horizon, n_out)`` from ``state``.

    Args:
        model: a model with a likelihood head (``model.likelihood`` set).
        state: ``batch`` rows, each having seen every row of its series *before* ``last``.
        last: ``(batch, n_in)``, the last observed input row of each series (the model's units).
        horizon: steps per path.
        num_samples: paths per row.
        seed: the same seed gives bitwise-equal paths; None draws from torch's global generator.
        scale: ``(batch, n_out)`` mean scale of each row (see :func:`hiddenstate.likelihood.mean_scale`):
            draws are in the series' units and go back in as ``draw / scale``. None: 1.
        target_index: where each output sits among the inputs (None: the inputs are the outputs);
            the other inputs are held at their ``last`` value, unless ``ahead`` is given.
        ahead: ``(batch, horizon - 1, n_in)``, the input rows after ``last`` (known future
            covariates); their target columns are ignored, each path's draws go there.
        seen_last: ``state`` has read ``last`` already (as a served stream's state has): the first
            step's distribution comes from the head on the top layer's ``h``, which is the model's
            output at ``last``; ``last`` then only supplies the inputs held for the next steps.
        lagged: ``(column, output, lag)`` triples, ``lag >= 2``: input ``column`` holds output
            ``output`` from ``lag`` steps back (a lag feature, as DeepAR's). Its values for the first
            ``lag`` steps come from ``last`` and ``ahead`` (the history); from step ``lag`` on, each
            path reads its own draw from ``lag`` steps earlier. Needs ``ahead`` when ``horizon > 1``.
        spread: a factor on the scale parameter of every step's distribution (Student-t and
            normal), fitted on held-out rows by ``Forecaster.calibrate``; each path is fed its
            widened draws, so the factor acts through the recurrence as well. 1: the model's own.

    Row ``s * batch + b`` of the repeated state is path ``s`` of row ``b``.
    """
    lik = getattr(model, "likelihood", None)
    if lik is None:
        raise ConfigError("sample_paths needs a model with a likelihood head; build it with likelihood='studentt'")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ConfigError(f"horizon must be an int >= 1, got {horizon!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an int >= 1, got {num_samples!r}")
    n_in, n_out = int(model.input_size), int(model.output_size)
    p = next(model.parameters())
    x = torch.as_tensor(last).to(p.device, p.dtype)
    batch = state.batch_size
    if x.dim() != 2 or tuple(x.shape) != (batch, n_in):
        raise ShapeError(f"last: expected shape (batch={batch}, n_in={n_in}), got {tuple(x.shape)}")
    if target_index is None:
        if n_in != n_out:
            raise ConfigError(f"the model has {n_in} inputs and {n_out} outputs; pass target_index")
        target_index = range(n_out)
    index = torch.as_tensor(list(target_index), dtype=torch.long, device=p.device)
    if index.numel() != n_out:
        raise ConfigError(f"target_index names {index.numel()} columns but the model has {n_out} outputs")
    lags = _check_lagged(lagged, n_in, n_out)
    check_spread(spread, lik)
    if any(col in set(index.tolist()) for col, _, _ in lags):
        raise ConfigError("lagged: a lag column cannot also be a target_index column (that one is lag 1)")
    if lags and ahead is None and horizon > 1:
        raise ConfigError("lagged inputs need `ahead`: their values before the draws reach them come from the history")
    s = None
    if scale is not None:
        s = torch.as_tensor(scale).to(p.device, p.dtype)
        if tuple(s.shape) != (batch, n_out):
            raise ShapeError(f"scale: expected shape (batch={batch}, n_out={n_out}), got {tuple(s.shape)}")
        s = s.repeat(num_samples, 1)  # (num_samples * batch, n_out)
    rows = torch.arange(batch, device=p.device).repeat(num_samples)  # sample-major: row s*batch + b
    future = None
    if ahead is not None:
        future = torch.as_tensor(ahead).to(p.device, p.dtype)
        if tuple(future.shape) != (batch, horizon - 1, n_in):
            raise ShapeError(
                f"ahead: expected shape (batch={batch}, horizon-1={horizon - 1}, n_in={n_in}), "
                f"got {tuple(future.shape)}"
            )
        future = future[rows]  # (num_samples * batch, horizon - 1, n_in)
    step = _stepper(model, state.to(p.device).select(rows))
    x = x[rows]  # (num_samples * batch, n_in)
    draws: list[torch.Tensor] = []
    fed = torch.empty(horizon, x.shape[0], n_out, dtype=p.dtype, device=p.device)  # draws / scale, as fed back
    lags.sort(key=lambda t: t[2])  # the lags reaching the draws at step k are the first `reach[k]`
    reach = [sum(lag <= k for _, _, lag in lags) for k in range(horizon)]
    lag_col, lag_out, lag_len = (
        torch.tensor([t[i] for t in lags], dtype=torch.long, device=p.device) for i in range(3)
    )
    was_training = model.training
    model.eval()
    try:
        gen = _generator(seed, p.device)
        with torch.no_grad():
            for k in range(horizon):
                if k:
                    fed[k - 1] = draws[-1] / s if s is not None else draws[-1]
                    x = future[:, k - 1].clone() if future is not None else x.clone()
                    x[:, index] = fed[k - 1]  # this path's draw goes back in
                m = reach[k]
                if m:  # each lag column reads this path's own draw from `lag` steps back, in one gather
                    x[:, lag_col[:m]] = fed[k - lag_len[:m], :, lag_out[:m]].T
                # the output at `last` is the head on the top layer's h when the state has read it
                raw = step(None if k == 0 and seen_last else x)  # (num_samples * batch, n_params * n_out)
                draws.append(lik.sample(raw, s, spread, gen))  # (num_samples * batch, n_out), series units
    finally:
        model.train(was_training)
    return torch.stack(draws, dim=1).view(num_samples, batch, horizon, n_out)


_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}


def _stepper(model: Any, state: State) -> Any:
    """``step(x)``: one recurrent step of ``x`` ``(rows, n_in)`` (None: no input, the head on the
    state's top ``h``), advancing the state kept inside; returns the head's output ``(rows, k)``.

    For a plain stack (the default backend, no hooks) the step keeps the state's tensors between
    steps: LSTM layers of at most 64 units from 16 rows on, up to 28,000 rows x units, take one
    BLAS product and one pass of the C kernel per layer (:func:`_gemm_stepper`); otherwise, up to
    256 rows, each layer's cell function, above that one RNN kernel call per group of same-sized
    layers. Each is the same arithmetic as the model's one-step forward (to float rounding)
    without building a State per step. Anything else goes through ``model(x, state)``.
    """
    rnn = getattr(model, "rnn", None)
    cells = getattr(rnn, "_cell_list", None)
    lean = (
        cells is not None
        and getattr(rnn, "_fused", None) is None
        and all(not c._forward_hooks and not c._forward_pre_hooks for c in cells)
    )
    if not lean:
        box = [state]

        def general(x: torch.Tensor | None) -> torch.Tensor:
            if x is None:
                return model.apply_head(box[0].layers[-1].h)
            raw, box[0] = model(x.unsqueeze(1), box[0])
            return raw[:, 0] if raw.dim() == 3 else raw  # a last-step model gives (rows, k)

        return general
    kinds = [ls.cell for ls in model.state_spec.layers]
    if _pointwise_ok(cells, state):  # LSTM layers: one product and one kernel pass per layer
        return _gemm_stepper(model, cells, state)
    if state.batch_size <= _CELL_ROWS:  # few rows: the cell functions, one layer at a time, beat the kernel's setup
        return _cell_stepper(model, cells, kinds, state)
    groups = rnn._groups if rnn._groupable(state.layers[0].h) else rnn._singles
    hx: list[Any] = [hx_for_layers(state, a, b, kinds[a] == "lstm") for a, b in groups]

    def kernel_step(x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            top = hx[-1][0] if kinds[-1] == "lstm" else hx[-1]
            return model.apply_head(top[-1])
        out = x
        for g, (a, b) in enumerate(groups):  # one kernel call per group, its state kept stacked
            seq, hx[g] = rnn_kernel(kinds[a], cells[a:b], out.unsqueeze(1), hx[g], 0.0)
            out = seq[:, 0]
        return model.apply_head(out)

    return kernel_step


_CELL_ROWS = 256
_GEMM_ROWS, _GEMM_HIDDEN, _GEMM_WORK = 16, 64, 28_000


def _cell_stepper(model: Any, cells: Sequence[Any], kinds: Sequence[str], state: State) -> Any:
    """The step through each layer's cell function, each layer's state kept between steps."""
    steps = []
    for cell, kind in zip(cells, kinds, strict=True):
        w = [getattr(cell, n) for n in cell._flat_weights_names]
        steps.append((_CELLS[kind], w[0], w[1], *((w[2], w[3]) if len(w) == 4 else (None, None))))
    hx: list[Any] = [(ls.h, ls.c) if kind == "lstm" else ls.h for ls, kind in zip(state.layers, kinds, strict=True)]

    def cell_step(x: torch.Tensor | None) -> torch.Tensor:
        if x is not None:
            for i, (fn, w_ih, w_hh, b_ih, b_hh) in enumerate(steps):
                hx[i] = fn(x, hx[i], w_ih, w_hh, b_ih, b_hh)
                x = hx[i][0] if isinstance(hx[i], tuple) else hx[i]
        top = hx[-1][0] if isinstance(hx[-1], tuple) else hx[-1]
        return model.apply_head(top)

    return cell_step


def _pointwise_ok(cells: Sequence[Any], state: State) -> bool:
    """Whether :func:`_gemm_stepper` runs: layers the C kernel can run (plain LSTM ones), of at
    most 64 units, at least 16 rows and at most 28,000 rows x units (700 rows of 40), CPU
    float32/float64, and the kernel built or buildable here. Below 16 rows the cell functions
    are as fast; for wider layers or more rows the RNN kernel's fused step is faster
    (docs/performance.md gives the timings)."""
    from hiddenstate._kernels.fused import fusable

    h = state.layers[0].h
    return (
        state.batch_size >= _GEMM_ROWS
        and all(fusable(c) and c.hidden_size <= _GEMM_HIDDEN for c in cells)
        and state.batch_size * max(c.hidden_size for c in cells) <= _GEMM_WORK
        and h.device.type == "cpu"
        and h.dtype in (torch.float32, torch.float64)
        and all(w.dtype == h.dtype for c in cells for w in c.parameters())
        and _kernel_ready()
    )


@functools.cache
def _kernel_ready() -> bool:
    """Whether the C kernel is built or builds here, asked once per process: a build that fails
    (no compiler, a compiler error) is not retried on every call, the loop takes its other steps."""
    from hiddenstate._kernels.fused import fused_available

    return fused_available()


def _gemm_stepper(model: Any, cells: Sequence[Any], state: State) -> Any:
    """The step for a stack of LSTM layers: per layer one BLAS product of ``[x, h]`` with the
    stacked weights ``[W_ih, W_hh]^T``, then one pass of the C kernel for the activations and the
    cell update (:func:`~hiddenstate._kernels.fused.lstm_pointwise`), which writes ``h`` back
    into the buffer the next product reads. The same function as ``nn.LSTM`` to ~1e-6 (the
    kernel's exp); what the elementwise ops cost per step is one pass over the gates."""
    from hiddenstate._kernels.fused import pointwise_step

    rows = state.batch_size
    layers = []
    with torch.no_grad():  # buffers and stacked weights, outside autograd
        for cell, ls in zip(cells, state.layers, strict=True):
            w_ih, w_hh, b_ih, b_hh = (getattr(cell, n) for n in cell._flat_weights_names)
            n_in, hidden = w_ih.shape[1], w_hh.shape[1]
            xh = w_ih.new_empty(rows, n_in + hidden)  # [x, h]: the product's one operand
            xh[:, n_in:] = ls.h
            w = torch.cat([w_ih, w_hh], 1).T.contiguous()  # (n_in + hidden, 4 * hidden)
            gates = w_ih.new_empty(rows, 4 * hidden)
            # the kernel pass on these buffers, checked once: it writes h_t where the next product reads h
            cell = pointwise_step(gates, ls.c.clone(), xh[:, n_in:])
            layers.append((n_in, xh, w, b_ih + b_hh, gates, cell))
    top = layers[-1][1][:, layers[-1][0] :]  # the top layer's h, where its kernel pass writes it

    def gemm_step(x: torch.Tensor | None) -> torch.Tensor:
        if x is not None:
            for n_in, xh, w, b, gates, cell in layers:
                xh[:, :n_in] = x
                torch.addmm(b, xh, w, out=gates)
                cell()
                x = xh[:, n_in:]
        return model.apply_head(top)

    return gemm_step


def check_spread(spread: Any, lik: Any) -> float:
    """``spread`` as a float: finite and > 0, and 1 for a likelihood without a scale parameter."""
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not np.isfinite(spread) or spread <= 0:
        raise ConfigError(f"spread must be a finite number > 0, got {spread!r}")
    if spread != 1.0 and not lik.spreads:
        raise ConfigError(f"spread: likelihood {lik.name!r} has no scale parameter to widen; use studentt or normal")
    return float(spread)


def _check_lagged(lagged: Sequence[tuple[int, int, int]], n_in: int, n_out: int) -> list[tuple[int, int, int]]:
    out = []
    for item in lagged:
        if len(item) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise ConfigError(f"lagged: expected (column, output, lag) int triples, got {item!r}")
        col, o, lag = item
        if not 0 <= col < n_in or not 0 <= o < n_out or lag < 2:
            raise ConfigError(
                f"lagged: {item!r} needs 0 <= column < {n_in}, 0 <= output < {n_out} and lag >= 2 "
                "(lag 1 is the output's own input column, target_index)"
            )
        if any(col == c for c, _, _ in out):
            raise ConfigError(f"lagged: column {col} is named twice")
        out.append((col, o, lag))
    return out


def path_quantiles(paths: torch.Tensor | np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles over the sample axis: ``(num_samples, ...)`` -> ``(len(quantiles), ...)``.

    >>> path_quantiles(np.arange(11.0)[:, None], [0.1, 0.5])[:, 0].tolist()
    [1.0, 5.0]
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or not ((q > 0) & (q < 1)).all():
        raise ConfigError(f"quantiles must be numbers in (0, 1), got {list(quantiles)}")
    a = paths.detach().cpu().double().numpy() if isinstance(paths, torch.Tensor) else np.asarray(paths, np.float64)
    return np.quantile(a, q, axis=0)


def sample_paths_original(
    run: Any, history: Any, horizon: int, num_samples: int = 100, seed: int | None = None
) -> np.ndarray:
    """Paths ``(num_samples, batch, horizon, n_targets)`` in original units from a run (model + scalers).

    ``history`` ``(steps, n_inputs)`` or ``(batch, steps, n_inputs)`` in original units: the state
    is warmed over all but its last row, which starts the paths; draws come back through the
    run's target scaler. This is what ``Run.forecast(..., quantiles=[...])`` calls.
    """
    from hiddenstate.forecast import _feedback_index, _target_scaler, warm

    h = np.asarray(history.detach().cpu() if isinstance(history, torch.Tensor) else history, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    n_in = len(run.inputs)
    if h.ndim != 3 or h.shape[2] != n_in or h.shape[1] < 2:
        raise ShapeError(f"history: expected shape (steps >= 2, {n_in}) or (batch, steps, {n_in}), got {h.shape}")
    tidx = _feedback_index(run)
    if len(tidx) != len(run.targets):
        raise ConfigError("sample paths feed each draw back as an input: every target must be an input")
    x = torch.as_tensor(run.scaler.transform(h))  # (batch, steps, n_inputs), normalised
    state = warm(run.model, x[:, :-1])
    paths = sample_paths(run.model, state, x[:, -1], horizon, num_samples, seed, target_index=tidx)
    return np.asarray(_target_scaler(run, tidx).inverse_transform(paths.double().numpy()))

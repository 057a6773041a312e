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


def whole(name: str, value: Any, low: int = 1) -> int:
    """``value`` as an int ``>= low``: Python and numpy integers pass, bools and floats fail by ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int | None:
    """``seed`` as an int (numpy integers too), or None; anything else fails by name."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed must be an int or None, got {seed!r}")
    return int(seed)


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
    horizon, num_samples = whole("horizon", horizon), whole("num_samples", num_samples)
    seed = check_seed(seed)
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
    draws: list[torch.Tensor] = []
    fed = torch.empty(horizon, batch * num_samples, n_out, dtype=p.dtype, device=p.device)  # draws / scale, fed back
    lags.sort(key=lambda t: t[2])  # the lags reaching the draws at step k are the first `reach[k]`
    reach = [sum(lag <= k for _, _, lag in lags) for k in range(horizon)]
    lag_col, lag_out, lag_len = (
        torch.tensor([t[i] for t in lags], dtype=torch.long, device=p.device) for i in range(3)
    )
    own = {m: torch.cat([index, lag_col[:m]]) for m in set(reach)}  # the columns each path fills itself
    was_training = model.training
    model.eval()
    try:
        gen = _generator(seed, p.device)
        with torch.no_grad():
            # every path of a row starts from the same state and input: the first step runs once per row
            state = state.to(p.device)
            if seen_last:  # the output at `last` is the head on the top layer's h
                first = model.apply_head(state.layers[-1].h)
            else:
                first, state = _one_step(model, x, state)
            step = _stepper(model, state.select(rows), num_samples) if horizon > 1 else None
            for k in range(horizon):
                if k:
                    fed[k - 1] = draws[-1] / s if s is not None else draws[-1]
                    m = reach[k]
                    # this path's draw goes back in; each lag column reads its own draw from `lag` steps back
                    own_x = torch.cat([fed[k - 1], fed[k - lag_len[:m], :, lag_out[:m]].T], 1) if m else fed[k - 1]
                    raw = step(future[:, k - 1] if future is not None else x, own[m], own_x)
                else:
                    raw = first[rows]
                draws.append(lik.sample(raw, s, spread, gen))  # (num_samples * batch, n_out), series units
    finally:
        model.train(was_training)
    return torch.stack(draws, dim=1).view(num_samples, batch, horizon, n_out)


def _one_step(model: Any, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """The model's one-step forward of ``x`` ``(rows, n_in)``: the head's output ``(rows, k)`` and the new state."""
    raw, state = model(x.unsqueeze(1), state)
    return (raw[:, 0] if raw.dim() == 3 else raw), state


def _inputs(shared: torch.Tensor, cols: torch.Tensor, own: torch.Tensor, reps: int) -> torch.Tensor:
    """The input rows ``(reps * batch, n_in)``: ``shared`` ``(batch, n_in)`` repeated for every path,
    with columns ``cols`` set to each path's own values ``own`` ``(reps * batch, len(cols))``."""
    x = shared.repeat(reps, 1)
    x[:, cols] = own
    return x


_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}


def _stepper(model: Any, state: State, reps: int = 1) -> Any:
    """``step(shared, cols, own)``: one recurrent step of the input rows ``shared`` ``(batch, n_in)``,
    repeated for the ``reps`` paths of each row (``state`` holds ``reps * batch`` rows, sample-major),
    with columns ``cols`` set to each path's own values ``own`` ``(reps * batch, len(cols))``;
    advances the state kept inside and returns the head's output ``(reps * batch, k)``.

    For a plain stack (the default backend, no hooks) the step keeps the state's tensors between
    steps: LSTM layers take one matrix product and one pass of the C kernel per layer
    (:func:`_gemm_stepper`); other stacks, up to 256 rows, each layer's cell function, above that
    one RNN kernel call per group of same-sized layers. Each is the same arithmetic as the
    model's one-step forward (to float rounding) without building a State per step. Anything
    else goes through ``model(x, state)``.
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

        def general(shared: torch.Tensor, cols: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
            raw, box[0] = _one_step(model, _inputs(shared, cols, own, reps), box[0])
            return raw

        return general
    kinds = [ls.cell for ls in model.state_spec.layers]
    if _pointwise_ok(cells, state):  # LSTM layers: one product and one kernel pass per layer
        return _gemm_stepper(model, cells, state, reps)
    if state.batch_size <= _CELL_ROWS:  # few rows: the cell functions, one layer at a time, beat the kernel's setup
        return _cell_stepper(model, cells, kinds, state, reps)
    groups = rnn._groups if rnn._groupable(state.layers[0].h) else rnn._singles
    hx: list[Any] = [hx_for_layers(state, a, b, kinds[a] == "lstm") for a, b in groups]

    def kernel_step(shared: torch.Tensor, cols: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        out = _inputs(shared, cols, own, reps)
        for g, (a, b) in enumerate(groups):  # one kernel call per group, its state kept stacked
            seq, hx[g] = rnn_kernel(kinds[a], cells[a:b], out.unsqueeze(1), hx[g], 0.0)
            out = seq[:, 0]
        return model.apply_head(out)

    return kernel_step


_CELL_ROWS = 256


def _cell_stepper(model: Any, cells: Sequence[Any], kinds: Sequence[str], state: State, reps: int) -> Any:
    """The step through each layer's cell function, each layer's state kept between steps."""
    steps = []
    for cell, kind in zip(cells, kinds, strict=True):
        w = [getattr(cell, n) for n in cell._flat_weights_names]
        steps.append((_CELLS[kind], w[0], w[1], *((w[2], w[3]) if len(w) == 4 else (None, None))))
    hx: list[Any] = [(ls.h, ls.c) if kind == "lstm" else ls.h for ls, kind in zip(state.layers, kinds, strict=True)]

    def cell_step(shared: torch.Tensor, cols: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        x = _inputs(shared, cols, own, reps)
        for i, (fn, w_ih, w_hh, b_ih, b_hh) in enumerate(steps):
            hx[i] = fn(x, hx[i], w_ih, w_hh, b_ih, b_hh)
            x = hx[i][0] if isinstance(hx[i], tuple) else hx[i]
        return model.apply_head(x)

    return cell_step


def _pointwise_ok(cells: Sequence[Any], state: State) -> bool:
    """Whether :func:`_gemm_stepper` runs: layers the C kernel can run (plain LSTM ones), CPU
    float32/float64, and the kernel built or buildable here. With oneDNN's products it beats
    the cell functions and the RNN kernel at every shape timed, 2 to 5,600 rows of 8 to 256
    units (docs/performance.md gives the timings)."""
    from hiddenstate._kernels.fused import fusable, kernel_ready

    h = state.layers[0].h
    return (
        all(fusable(c) for c in cells)
        and h.device.type == "cpu"
        and h.dtype in (torch.float32, torch.float64)
        and all(w.dtype == h.dtype for c in cells for w in c.parameters())
        and kernel_ready()
    )


def _gemm_stepper(model: Any, cells: Sequence[Any], state: State, reps: int) -> Any:
    """The step for a stack of LSTM layers: per layer one matrix product of ``[h, x]`` with the
    stacked weights ``[W_hh, W_ih]`` (:func:`_product`), then one pass of the C kernel for the
    activations and the cell update (:func:`~hiddenstate._kernels.fused.lstm_pointwise`), which
    writes ``h`` back into the buffer the next product reads. The same function as ``nn.LSTM``
    to ~1e-6 (the kernel's exp); what the elementwise ops cost per step is one pass over the
    gates (the g gate's weights doubled, so that the pass is one sigmoid loop: ``g_doubled``).
    The first layer's input columns are each row's shared values, repeated for its paths, then
    each path's own values in their columns."""
    from hiddenstate._kernels.fused import pointwise_step

    rows = state.batch_size
    layers = []
    with torch.no_grad():  # buffers and stacked weights, outside autograd
        for cell, ls in zip(cells, state.layers, strict=True):
            w_ih, w_hh, b_ih, b_hh = (getattr(cell, n) for n in cell._flat_weights_names)
            n_in, hidden = w_ih.shape[1], w_hh.shape[1]
            hx = w_ih.new_empty(rows, hidden + n_in)  # [h, x]: the product's one operand
            hx[:, :hidden] = ls.h
            # the kernel pass on these buffers, checked once: it writes h_t where the next product reads h
            cell_pass = pointwise_step(ls.c.clone(), hx[:, :hidden], g_doubled=True)
            w, b = torch.cat([w_hh, w_ih], 1), b_ih + b_hh  # (4H, H + n_in), (4H,)
            w[2 * hidden : 3 * hidden] *= 2  # the g gate's products doubled (exact): all four gates are sigmoids
            b[2 * hidden : 3 * hidden] *= 2
            layers.append((hidden, hx, _product(rows, w, b), cell_pass))
    hidden0, hx0 = layers[0][:2]
    inputs = hx0[:, hidden0:]  # the first layer's x columns
    repeated = inputs.view(reps, rows // reps, inputs.shape[1])  # path s of row b: [s, b]
    top = layers[-1][1][:, : layers[-1][0]]  # the top layer's h, where its kernel pass writes it
    head = _head_of(model)

    def gemm_step(shared: torch.Tensor, cols: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        repeated.copy_(shared)
        inputs[:, cols] = own
        x = None
        for hidden, hx, product, cell_pass in layers:
            if x is not None:
                hx[:, hidden:] = x
            cell_pass(product(hx))
            x = hx[:, :hidden]
        return head(top)

    return gemm_step


#: from this much work (rows x inputs x outputs of one product) the step takes oneDNN's matmul
#: (on an AMD EPYC with AVX-512, where MKL runs its AVX2 kernels, it is 2x faster at 700 x 80 x
#: 160 and its ~11 us setup per call loses below about 1e6; the bar sits above that, where MKL's
#: own AVX-512 kernels may be as fast: docs/performance.md)
_ONEDNN_WORK = 4_000_000


def _product(rows: int, w: torch.Tensor, b: torch.Tensor) -> Any:
    """``product(x)``: ``x @ w.T + b`` for ``rows`` rows, through oneDNN's matmul where it runs
    here (float32 CPU tensors, checked once per process against the BLAS) and the product is
    large enough, else the BLAS (``torch.addmm``)."""
    if w.dtype == torch.float32 and rows * w.shape[0] * w.shape[1] >= _ONEDNN_WORK and _onednn_ready():
        linear = torch.ops.mkldnn._linear_pointwise

        def onednn(x: torch.Tensor) -> torch.Tensor:
            return linear(x, w, b, "none", [], "")

        return onednn
    w_t = w.T

    def blas(x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b, x, w_t)

    return blas


@functools.cache
def _onednn_ready() -> bool:
    """Whether oneDNN's fused linear (the op torch.compile emits for CPU linears) is in this build
    and computes what the BLAS does, on a strided operand as the sampling loop passes it."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(shape, generator=gen) for shape in ((64, 40), (96, 30), (96,)))
        got = torch.ops.mkldnn._linear_pointwise(x[:, 5:35], w, b, "none", [], "")
        return bool(torch.allclose(got, torch.addmm(b, x[:, 5:35], w.T), rtol=1e-4, atol=1e-5))
    except (AttributeError, NotImplementedError, RuntimeError, TypeError, ValueError):  # a missing op or an old schema
        return False


def _head_of(model: Any) -> Any:
    """``model.apply_head``, or for a plain linear head (no Dense layers, dropout, activation or
    hooks) its one product: the same arithmetic without the module call."""
    head = model.head
    plain = (
        not len(model.dense)
        and model.head_dropout is None
        and model.head_activation is None
        and head.bias is not None
        and not head._forward_hooks
        and not head._forward_pre_hooks
    )
    if not plain:
        return model.apply_head
    w, b = head.weight.T, head.bias

    def linear(h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b, h, w)

    return linear


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

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

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.state import State

__all__ = ["path_quantiles", "sample_paths"]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw from torch's generator seeded with ``seed`` and leave the caller's generator as it was."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
    st = state.to(p.device).select(rows)
    x = x[rows]  # (num_samples * batch, n_in)
    draws = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _seeded(seed, p.device):
            for k in range(horizon):
                if k and future is not None:
                    x = future[:, k - 1].index_copy(1, index, x.index_select(1, index))
                if k == 0 and seen_last:  # the output at `last` is the head on the top layer's h
                    raw = model.apply_head(st.layers[-1].h.unsqueeze(1))
                else:
                    raw, st = model(x.unsqueeze(1), st)  # raw: (num_samples * batch, 1, n_params * n_out)
                z = lik.distribution(raw[:, 0], s).sample()  # (num_samples * batch, n_out), series units
                draws.append(z)
                x = x.index_copy(1, index, z / s if s is not None else z)  # this path's draw goes back in
    finally:
        model.train(was_training)
    return torch.stack(draws, dim=1).view(num_samples, batch, horizon, n_out)


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

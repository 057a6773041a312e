"""Forecast windows of one series for :class:`~hiddenstate.train.trainer.Trainer`, with the carried context.

A window at row ``s`` has input rows ``[s, s+L)`` and target rows ``[s+L, s+L+H)``; windows slide
by 1 over a row range, as in the ETT protocol. :class:`ForecastWindows` yields them in (shuffled)
batches that the Trainer trains on with ``state_policy="batch"``; the loss is over all variables
of every window.

With a context GRU (:class:`~hiddenstate.models.segrnn.SegRNN` with ``context > 0``, the "stateful"
protocol) every window also gets the context state after all the whole segments of history before
it. Each time the windows are iterated (once per training epoch, once per evaluation) they first
run the pre-pass: the context states over the full series, with the model's current weights and
without gradients (one stream per start offset modulo ``seg_len``). A training batch then brings
the cached state ``context_grad`` segments before each window, and its ``x`` starts there, so
that the model reruns those segments with gradients (truncated BPTT)::

    rows   0 ........................................ s-K*seg ...... s [window L] [target H]
    state  zeros ─ no grad, pre-pass per epoch ──────► h  ─ grad ─► h_s ─► encoder
                                                       batch.state   batch.x = rows [s-K*seg, s+L)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hiddenstate.errors import ConfigError
from hiddenstate.models.segrnn import SegRNN
from hiddenstate.state import LayerState, State

__all__ = ["ForecastWindows", "WindowBatch", "context_cache", "window_starts"]


def window_starts(lo: int, hi: int, input_len: int, horizon: int) -> np.ndarray:
    """Starts of every window with input and target inside rows ``[lo, hi)``."""
    return np.arange(lo, hi - input_len - horizon + 1)


def _gather(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``data (rows, vars)``, ``starts (batch,)`` -> ``(batch, length, vars)``."""
    idx = starts.unsqueeze(1) + torch.arange(length, device=starts.device).unsqueeze(0)  # (batch, length)
    return data[idx]


@torch.no_grad()
def context_cache(model: SegRNN, data: torch.Tensor) -> torch.Tensor:
    """States of the context GRU after every whole segment before every row, without gradients.

    Returns ``(seg_len, rows // seg_len + 1, lanes, context)``: entry ``[r, k]`` is the state of the
    stream that starts (from zeros) at row ``r`` after ``k`` segments, i.e. the carried state at row
    ``r + k*seg_len``.
    """
    seg = model.seg_len
    streams = []
    n = data.shape[0] // seg
    for r in range(seg):
        k = (data.shape[0] - r) // seg
        hs, _ = model.context_states(data[r : r + k * seg])  # (k+1, lanes, context)
        pad = hs.new_zeros(n + 1 - hs.shape[0], *hs.shape[1:])
        streams.append(torch.cat([hs, pad], dim=0))
    return torch.stack(streams)


@dataclass(frozen=True, eq=False)
class WindowBatch:
    """One batch of forecast windows, in the shape the Trainer reads.

    - ``x`` ``(batch, K*seg_len + L, vars)``: the window, after ``K`` segments of history (K > 0
      only when training a context model);
    - ``y`` ``(batch, H, vars)``: the targets; ``mask`` ``(batch, H)``: all True;
    - ``state``: the context State at the first row of ``x`` (``batch*lanes`` rows), or None;
    - ``reset`` ``(batch,)``: all True, every window starts afresh;
    - ``starts`` ``(batch,)``: each window's first row in the series.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    reset: torch.Tensor
    state: State | None
    starts: torch.Tensor


class ForecastWindows:
    """Every window of ``model`` in rows ``rows`` of ``data``, in batches; re-iterable.

    ``data`` is the whole scaled series ``(rows, vars)`` (the context pre-pass reads all of it);
    ``rows = (lo, hi)`` bounds the windows' inputs and targets. With ``shuffle``, each iteration
    draws a new order from ``seed`` and the epoch (see :meth:`set_epoch`, which the Trainer calls).
    ``context_grad`` is the number of segments before each window that training reruns with
    gradients (a context model only; windows that start earlier are left out). The last batch
    may be smaller.

    >>> m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=4)
    >>> w = ForecastWindows(m, torch.zeros(40, 2), (0, 20), batch_size=3)
    >>> len(w.starts), len(w), tuple(next(iter(w)).x.shape)
    (9, 3, (3, 8, 2))
    """

    def __init__(
        self,
        model: SegRNN,
        data: torch.Tensor,
        rows: tuple[int, int],
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        seed: int = 0,
        context_grad: int = 0,
    ) -> None:
        if data.dim() != 2 or data.shape[1] != model.n_vars:
            raise ConfigError(f"ForecastWindows data: expected (rows, vars={model.n_vars}), got {tuple(data.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"ForecastWindows batch_size: expected an int >= 1, got {batch_size!r}")
        if context_grad < 0 or (context_grad and not model.context):
            raise ConfigError(f"ForecastWindows context_grad={context_grad}: needs a model with a context GRU and >= 0")
        lo, hi = rows
        if not 0 <= lo <= hi <= data.shape[0]:
            raise ConfigError(f"ForecastWindows rows [{lo}, {hi}) are not inside the series' {data.shape[0]} rows")
        self.model, self.data, self.rows = model, data, (int(lo), int(hi))
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, int(seed), 0
        self.context_grad = context_grad
        starts = window_starts(lo, hi, model.input_len, model.horizon)
        self.starts = starts[starts >= context_grad * model.seg_len]  # the rerun segments lie inside the series
        if not len(self.starts):
            raise ConfigError(
                f"ForecastWindows: no window of {model.input_len}+{model.horizon} rows fits in rows [{lo}, {hi})"
            )
        self._on: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[WindowBatch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.random.default_rng([self.seed, epoch]).permutation(self.starts) if self.shuffle else self.starts
        return self._batches(order)

    def _batches(self, order: np.ndarray) -> Iterator[WindowBatch]:
        model = self.model
        device = next(model.parameters()).device
        if device not in self._on:
            self._on[device] = self.data.to(device)
        data = self._on[device]
        cache = context_cache(model, data) if model.context else None  # the pre-pass, with today's weights
        g, seg, length, horizon = self.context_grad, model.seg_len, model.input_len, model.horizon
        for a in range(0, len(order), self.batch_size):
            s = torch.as_tensor(order[a : a + self.batch_size], device=device)  # (batch,)
            first = s - g * seg  # the first row of x
            x = _gather(data, first, g * seg + length)  # (batch, g*seg + L, vars)
            y = _gather(data, s + length, horizon)  # (batch, H, vars)
            state = None
            if cache is not None:
                h = cache[first % seg, first // seg].reshape(-1, cache.shape[-1])  # (batch*lanes, context)
                state = State._trusted(model.ctx_rnn.state_spec, [LayerState(h)])
            ones = torch.ones(len(s), dtype=torch.bool, device=device)
            yield WindowBatch(x, y, ones.unsqueeze(1).expand(-1, horizon), ones, state, s)

    def __repr__(self) -> str:
        return (
            f"ForecastWindows(windows={len(self.starts)}, rows={self.rows}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, context_grad={self.context_grad})"
        )

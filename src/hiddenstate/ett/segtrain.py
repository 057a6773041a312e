"""Training and scoring :class:`~hiddenstate.models.segrnn.SegRNN` on sliding windows of one series.

A window at row ``s`` has input rows ``[s, s+L)`` and target rows ``[s+L, s+L+H)``; windows slide
by 1 over a row range, as in the ETT protocol. The loss is over all variables of every window.
With a context GRU (the "stateful" protocol) each window also gets the context state after the
whole segments of history before it: the states are recomputed without gradients over the full
series at the start of every epoch (one stream per start offset modulo ``seg_len``), and the last
``context_grad`` segments before each window are rerun with gradients (truncated BPTT)::

    rows   0 ........................................ s-K*seg ...... s [window L] [target H]
    state  zeros ─ no grad, cached per epoch ────────► h  ─ grad ─► h_s ─► encoder
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hiddenstate.errors import ConfigError
from hiddenstate.models.segrnn import SegRNN
from hiddenstate.state import LayerState, State

__all__ = ["FitConfig", "FitResult", "evaluate", "fit", "window_starts"]


@dataclass(frozen=True)
class FitConfig:
    """How to train: Adam on MSE/MAE over shuffled windows, keeping the best epoch on validation."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 256
    loss: str = "mae"
    decay: float = 0.9  # lr multiplier per epoch after the third (SegRNN's "type3")
    patience: int = 3
    max_minutes: float = 20.0
    max_steps: int = 0  # 0: no limit; for smoke tests
    context_grad: int = 4  # segments of history rerun with gradients (stateful protocol)
    seed: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    best_epoch: int
    val_mse: float
    val_mae: float
    epochs_run: int
    steps: int
    seconds: float
    history: tuple[dict[str, float], ...]


def window_starts(lo: int, hi: int, input_len: int, horizon: int) -> np.ndarray:
    """Starts of every window with input and target inside rows ``[lo, hi)``."""
    return np.arange(lo, hi - input_len - horizon + 1)


def _gather(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``data (rows, vars)``, ``starts (batch,)`` -> ``(batch, length, vars)``."""
    idx = starts.unsqueeze(1) + torch.arange(length).unsqueeze(0)  # (batch, length)
    return data[idx]


def context_cache(model: SegRNN, data: torch.Tensor) -> torch.Tensor:
    """States of the context GRU after every whole segment before every row, without gradients.

    Returns ``(seg_len, rows // seg_len + 1, lanes, context)``: entry ``[r, k]`` is the state of the
    stream that starts (from zeros) at row ``r`` after ``k`` segments, i.e. the carried state at row
    ``r + k*seg_len``.
    """
    seg = model.seg_len
    streams = []
    with torch.no_grad():
        n = (data.shape[0]) // seg
        for r in range(seg):
            k = (data.shape[0] - r) // seg
            hs, _ = model.context_states(data[r : r + k * seg])  # (k+1, lanes, context)
            pad = hs.new_zeros(n + 1 - hs.shape[0], *hs.shape[1:])
            streams.append(torch.cat([hs, pad], dim=0))
    return torch.stack(streams)


def _context_for(
    model: SegRNN, data: torch.Tensor, cache: torch.Tensor, starts: torch.Tensor, grad_segments: int
) -> State:
    """The context state at each window start; the last ``grad_segments`` segments with gradients."""
    seg = model.seg_len
    r, k = starts % seg, starts // seg
    g = grad_segments
    h = cache[r, k - g].reshape(-1, cache.shape[-1])  # (batch*lanes, context): state g segments back
    if g:  # callers keep every start at least g segments into the series
        past = _gather(data, starts - g * seg, g * seg)  # (batch, g*seg, vars)
        segs = model.ctx_embed(model._to_segments(past))  # (batch*lanes, g, context)
        _, st = model.ctx_rnn(segs, State._trusted(model.ctx_rnn.state_spec, [LayerState(h)]))
        return st
    return State._trusted(model.ctx_rnn.state_spec, [LayerState(h)])


@torch.no_grad()
def evaluate(
    model: SegRNN,
    data: torch.Tensor,
    starts: np.ndarray,
    *,
    batch_size: int = 1024,
    cache: torch.Tensor | None = None,
    horizon: int | None = None,
) -> dict[str, float]:
    """MSE and MAE over all windows at ``starts`` and all variables, in scaled units."""
    model.eval()
    h = horizon or model.horizon
    se = ae = 0.0
    count = 0
    for i in range(0, len(starts), batch_size):
        s = torch.as_tensor(starts[i : i + batch_size])
        x = _gather(data, s, model.input_len)  # (batch, L, vars)
        y = _gather(data, s + model.input_len, h)  # (batch, H, vars)
        ctx = _context_for(model, data, cache, s, 0) if cache is not None else None
        pred, _ = model(x, ctx)
        err = pred[:, :h] - y
        se += float((err * err).sum(dtype=torch.float64))
        ae += float(err.abs().sum(dtype=torch.float64))
        count += err.numel()
    return {"mse": se / count, "mae": ae / count}


def fit(
    model: SegRNN,
    data: torch.Tensor,
    train: tuple[int, int],
    val: tuple[int, int],
    config: FitConfig,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` on windows in rows ``train``, select the epoch with the lowest val MSE.

    ``data`` is the whole scaled series ``(rows, vars)``; ``val`` may start ``input_len`` rows
    before its border (the protocol does). The best weights are loaded back into ``model``.
    """
    if config.loss not in ("mse", "mae"):
        raise ConfigError(f"FitConfig.loss={config.loss!r}; expected 'mse' or 'mae'")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    length, horizon = model.input_len, model.horizon
    train_starts = window_starts(*train, length, horizon)
    if model.context:
        train_starts = train_starts[train_starts >= config.context_grad * model.seg_len]
    val_starts = window_starts(*val, length, horizon)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.L1Loss() if config.loss == "mae" else nn.MSELoss()
    best = (math.inf, 0.0, -1)
    best_weights = {k: v.clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    t0, steps, since_best = time.perf_counter(), 0, 0
    per_epoch = math.ceil(len(train_starts) / config.batch_size)
    epoch = 0
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * (config.decay ** max(0, epoch - 2))
        cache = context_cache(model, data) if model.context else None
        model.train()
        order = rng.permutation(train_starts)
        total = 0.0
        stopped = False
        for i in range(per_epoch):
            s = torch.as_tensor(order[i * config.batch_size : (i + 1) * config.batch_size])
            x = _gather(data, s, length)  # (batch, L, vars)
            y = _gather(data, s + length, horizon)  # (batch, H, vars)
            ctx = _context_for(model, data, cache, s, config.context_grad) if cache is not None else None
            pred, _ = model(x, ctx)
            loss = loss_fn(pred, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
            over_time = time.perf_counter() - t0 > config.max_minutes * 60
            if (config.max_steps and steps >= config.max_steps) or over_time:
                stopped = True
                break
        cache = context_cache(model, data) if model.context else None
        scores = evaluate(model, data, val_starts, cache=cache)
        row = {
            "epoch": epoch,
            "train_loss": total / max(1, i + 1),
            "val_mse": scores["mse"],
            "val_mae": scores["mae"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log(
            f"epoch {epoch}: train {row['train_loss']:.4f} val mse {scores['mse']:.4f} mae {scores['mae']:.4f} "
            f"({row['seconds']:.0f}s)"
        )
        if scores["mse"] < best[0]:
            best = (scores["mse"], scores["mae"], epoch)
            best_weights = {k: v.clone() for k, v in model.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
        if stopped or since_best >= config.patience:
            break
    model.load_state_dict(best_weights)
    model.eval()
    return FitResult(best[2], best[0], best[1], epoch + 1, steps, time.perf_counter() - t0, tuple(history))

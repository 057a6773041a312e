"""Truncated backpropagation through time over stateful lanes: :class:`Trainer`, :class:`TrainConfig`.

The data arrives as :class:`~hiddenstate.data.lanes.Batch` chunks in which row i of chunk k+1
continues row i of chunk k (see ``StatefulBatches``). The Trainer carries each lane's state from
chunk to chunk and cuts the graph every ``detach_every`` chunks::

    lane 0   [chunk 0] --h,c--> [chunk 1] --h,c--> [chunk 2] --h,c--> [chunk 3]
    lane 1   [chunk 0] --h,c--> [chunk 1] --h,c--> [chunk 2] --h,c--> [chunk 3]
                          ^                  ^
             detach_every=1: backward, optimizer step and detach after every chunk;
             detach_every=2: one step per two chunks, gradients flow through both.

``state_policy`` says where each chunk's starting state comes from:

- ``"carry"``: the previous chunk's final state (Keras ``stateful=True``); rows whose
  ``batch.reset`` is set go back to the model's initial state (zeros, learned, or encoded).
- ``"encode"``: the model's StateEncoder applied to ``batch.cond`` (the true observation before
  the chunk), before every chunk; the encoder trains through it.
- ``"carry+encode"``: carry, and encode from ``batch.cond`` where a lane resets.
- ``"zeros"``: zeros every chunk; nothing is carried.
- ``"batch"``: the state each batch brings (``batch.state``; None gives the model's default), for
  data sources that compute every window's starting state themselves, such as the ETT windows
  whose context state is carried through all earlier rows (``hiddenstate.ett.windows``).

A batch is a :class:`~hiddenstate.data.lanes.Batch` or anything with its ``x``, ``y``, ``mask``
and ``reset`` (and ``cond`` for a StateEncoder, ``state`` for ``"batch"``); ``y`` and ``mask``
may have other steps than ``x``, as for forecast windows that read L steps and predict H.

The loop reads top to bottom in :meth:`Trainer.fit`. It keeps the loss on the device and
synchronises once per epoch (or every few chunks when the progress bar shows). Under ``torchrun``
the same loop trains data-parallel, each rank on its own block of lanes
(:mod:`hiddenstate.distributed`, docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hiddenstate import distributed
from hiddenstate.data.lanes import Batch
from hiddenstate.errors import CheckpointError, ConfigError
from hiddenstate.runs import run as checkpoint
from hiddenstate.state import State, StateSpec
from hiddenstate.train.precision import autocast, grad_scaler
from hiddenstate.train.progress import Progress
from hiddenstate.train.resume import batch_layout, check_history, check_resume

__all__ = ["Callback", "History", "TrainConfig", "Trainer", "default_threads"]

from hiddenstate.train.config import (
    METRICS_COLUMNS,
    TrainConfig,
)


@dataclass
class History:
    """One row per finished epoch (the columns of ``metrics.csv``) and the early-stopping record."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False

    @property
    def train_loss(self) -> list[float]:
        return [r["train_loss"] for r in self.rows]

    @property
    def val_loss(self) -> list[float | None]:
        return [r["val_loss"] for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        return cls(**data)


Callback = Callable[["Trainer", dict[str, Any]], None]


_HOW_STEPPED = ("foreach", "fused", "capturable", "differentiable")


class Trainer:
    """Truncated-BPTT training of a stateful model over lane-ordered chunks.

    ``model`` is a :class:`~hiddenstate.model.SequenceModel` (or anything with its
    ``forward(x, state, *, cond=, reset=) -> (y, State)``); ``"encode"`` and ``"carry+encode"``
    need one built with ``state_encoder="cond:N"``.

    Each epoch starts every lane from the model's initial state, since the data starts over.
    ``fit`` returns a :class:`History`; ``lane_state`` is the State carried by every training lane
    at the end of the last epoch trained (detached; with ``restore_best`` the weights may come
    from an earlier epoch than this state, and with ``config.ema`` they are the moving average, while
    this state was carried by the weights that trained). Callbacks are called as ``callback(trainer, row)``
    after each epoch; setting ``trainer.should_stop = True`` ends training after that epoch.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None) -> None:
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise ConfigError(f"Trainer config: expected a TrainConfig, got {type(self.config).__name__}")
        # Under torchrun: this rank's place in the group and its device; None in one process.
        self.distributed = distributed.setup(self.config)
        self.device = self.distributed.device if self.distributed else _resolve_device(self.config.device)
        self.model = model.to(self.device)
        self._encodes = getattr(model, "encoder", None) is not None
        self._last_step = getattr(model, "return_sequences", True) is False
        self._likelihood = getattr(model, "likelihood", None)  # a likelihood head: the loss is its NLL
        policy = self.config.state_policy
        if policy in ("encode", "carry+encode") and not self._encodes:
            raise ConfigError(
                f"state_policy {policy!r} sets states from batch.cond through the model's StateEncoder; "
                "build the model with state_encoder='cond:N' (N = number of input columns)"
            )
        if self.config.backend != "torch":
            rnn = getattr(model, "rnn", None)
            if not hasattr(rnn, "set_backend"):
                raise ConfigError(f"TrainConfig.backend {self.config.backend!r}: the model has no StackedRNN `rnn`")
            if self.device.type != "cpu":
                raise ConfigError(f"TrainConfig.backend 'fused' runs on the CPU; the device is {self.device}")
            rnn.set_backend(self.config.backend)
        if self.config.precision != "fp32" and self.device.type != "cuda":
            raise ConfigError(
                f"TrainConfig.precision {self.config.precision!r} is mixed precision for CUDA; "
                f"the device is {self.device}: use 'fp32'"
            )
        self._scaler = grad_scaler(self.config.precision)  # active for fp16 only
        self._params = [p for p in model.parameters() if p.requires_grad]
        opt_class = torch.optim.AdamW if self.config.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel for every parameter instead of ~10 small ops each; for small models
        # the optimizer step is otherwise ~20% of a chunk (docs/performance.md). Same update to ~1e-7.
        fused = self.device.type in ("cpu", "cuda") or None
        self.optimizer = opt_class(self._params, lr=self.config.lr, weight_decay=self.config.weight_decay, fused=fused)
        self.lane_state: State | None = None
        self.history = History()
        self.epoch = 0  # finished epochs
        self.should_stop = False
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._ema: AveragedModel | None = None  # the moving average of the weights (config.ema)
        self._zeros: State | None = None
        self._deadline: float | None = None  # perf_counter() at which fit() stops (config.max_minutes)
        self._net = self.distributed.wrap(self.model) if self.distributed else self.model  # trains through DDP

    # -- the loop -------------------------------------------------------------------------------

    def fit(
        self,
        train_batches: Iterable[Any],
        val_batches: Iterable[Any] | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> History:
        """Train to ``config.epochs``; with ``run_dir``, write metrics.csv and a checkpoint per
        epoch; with ``resume=True``, continue from the newest checkpoint in ``run_dir`` exactly.

        ``train_batches`` and ``val_batches`` are re-iterable (iterated once per epoch).
        """
        cfg, dist = self.config, self.distributed
        run = Path(run_dir) if run_dir is not None else None
        # the global layout, before sharding: a run resumed under another number of ranks continues it
        layout_of = train_batches
        if dist is not None:  # this rank's lanes; after a torchrun restart, resume by itself
            train_batches = dist.shard(train_batches, training=True)
            resume = dist.should_resume(run, resume)
        if resume:
            if run is None:
                raise ConfigError("fit(resume=True) needs the run_dir to resume from")
            self._resume(run, layout_of)
        else:
            if run is not None and checkpoint.list_checkpoints(run):
                raise CheckpointError(
                    f"{run / 'checkpoints'}: holds checkpoints of an earlier run; "
                    "pass resume=True to continue it, or use a new run_dir"
                )
            _seed_everything(cfg.seed)
            if dist is not None:
                dist.seed(cfg.seed)
            self.epoch, self.history, self._best_weights, self.lane_state = 0, History(), None, None
            self._ema = self._new_average()
        self.should_stop = False
        self._layout = batch_layout(layout_of)  # saved with each checkpoint, checked on resume
        self._deadline = None if cfg.max_minutes is None else time.perf_counter() + cfg.max_minutes * 60
        with self._threads(), Progress(cfg.progress and (dist is None or dist.is_main)) as bar:
            while self.epoch < cfg.epochs and not self.history.stopped_early and not self.should_stop:
                lr = self._set_lr(self.epoch)
                start = time.perf_counter()
                train_loss, sample_steps = self._train_epoch(train_batches, bar)
                train_seconds = time.perf_counter() - start
                with self._averaged():  # with config.ema, validation scores the average
                    val_loss = self.evaluate(val_batches)["loss"] if val_batches is not None else None
                bar.show_val(val_loss)
                self.epoch += 1
                row = {
                    "epoch": self.epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": lr,
                    "seconds": time.perf_counter() - start,
                    "sample_steps_per_s": sample_steps / max(train_seconds, 1e-9),
                }
                self.history.rows.append(row)
                self._early_stopping(val_loss)
                if run is not None:
                    self._save(run)
                for callback in callbacks:
                    callback(self, row)
                if dist is not None:  # a callback's stop on one rank stops them all
                    self.should_stop = dist.any(self.should_stop)
        if self._best_weights is not None and cfg.restore_best:
            self.model.load_state_dict(self._best_weights)
        elif self._ema is not None:
            self.model.load_state_dict(self._validated().state_dict())
        return self.history

    def _new_average(self) -> AveragedModel | None:
        """A fresh moving average of the model's weights (``config.ema``), or None without one;
        its first update copies the weights after the first optimizer step."""
        if self.config.ema is None:
            return None
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema), use_buffers=True)

    def _validated(self) -> nn.Module:
        """What validation scores and early stopping keeps: the moving average once it holds a
        step (``config.ema``), else the model's own weights."""
        ema = self._ema
        return ema.module if ema is not None and int(ema.n_averaged) > 0 else self.model

    @contextmanager
    def _averaged(self) -> Iterator[None]:
        """The averaged weights in the model for the block, the trained ones back after it; a
        no-op when :meth:`_validated` is the model itself."""
        validated = self._validated()
        if validated is self.model:
            yield
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(validated.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def _train_epoch(self, batches: Iterable[Any], bar: Progress) -> tuple[float, int]:
        cfg, model, dist = self.config, self.model, self.distributed
        model.train()
        losses: list[torch.Tensor] = []  # each chunk's mean loss, detached; summed once per epoch
        counts: list[int] = []  # valid elements per chunk
        sample_steps = 0
        state: State | None = None
        window: list[tuple[torch.Tensor, int, int]] = []  # (loss, valid, every rank's valid) since the last step
        if hasattr(batches, "set_epoch"):  # a shuffling sampler reshuffles by epoch; resume stays exact
            batches.set_epoch(self.epoch)
        bar.start_epoch(self.epoch + 1, cfg.epochs, _length(batches))
        held: State | None = None  # each lane's state at its last valid step: what lane_state reports
        for batch in batches:
            x, y, cond, reset, mask, valid = self._to_device(batch)
            if cfg.state_policy == "batch":
                state = self._batch_state(batch)
            n = valid * y.shape[-1]
            entering = state
            with self._autocast():
                y_hat, state = self._forward(x, state, cond, reset)  # y_hat: (batch, steps, out)
                loss = self._loss(y_hat, y, mask, n, _batch_scale(batch, y))  # mean over the valid elements
            held = self._held(held, entering, state, batch, x, cond, reset, mask is None)
            window.append((loss, n, batch.global_valid * y.shape[-1] if dist else n))
            losses.append(loss.detach())
            counts.append(n)
            sample_steps += x.shape[0] * x.shape[1]
            if len(window) == cfg.detach_every:
                self._step(window)
                state = state.detach()
                window = []
            if bar.due():  # the bar reads the loss off the device only every few chunks
                bar.advance(_weighted_mean(losses, counts), sample_steps)
            if self._deadline is not None and self._past_deadline():
                self.should_stop = True  # the partial epoch is still validated and recorded
                break
        if window:
            self._step(window)
            state = state.detach() if state is not None else None
        held = held if held is not None else state
        if held is not None and cfg.precision != "fp32":  # kept, saved and resumed in the weights' dtype
            held = held.to(dtype=self._dtype())
        self.lane_state = held if dist is None or held is None else dist.gather_state(held)  # every lane
        train_loss = _weighted_mean(losses, counts)  # the epoch's one sync when the bar is off
        bar.end_epoch(train_loss, sample_steps)
        return train_loss, sample_steps

    def _past_deadline(self) -> bool:
        """Whether ``config.max_minutes`` is spent; under torchrun, on some rank, so that every rank
        stops after the same chunk (a rank that ran on would wait in a collective the others never join)."""
        past = self._deadline is not None and time.perf_counter() > self._deadline
        return past if self.distributed is None else self.distributed.any(past)

    def _held(
        self,
        held: State | None,
        entering: State | None,
        state: State,
        batch: Any,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        reset: torch.Tensor | None,
        all_valid: bool,
    ) -> State:
        """Each lane's state at its last valid step, after this chunk: the chunk's final state where
        every step was valid; where the lane's piece ended inside the chunk, the state after its
        valid steps only (run again, without gradients, from the state it entered with); where the
        lane was idle (all padding), what it held before. Padded steps read zeros, and a carried
        state must not have read them."""
        if all_valid:
            return state.detach()
        valid = batch.mask.sum(dim=1).tolist()  # per row (a valid prefix: pieces start at chunk starts)
        steps = int(batch.mask.shape[1])
        rows = []
        for r, v in enumerate(valid):
            if v == steps:
                rows.append(state.select([r]).detach())
            elif v == 0:
                rows.append((held if held is not None else state).select([r]).detach())
            else:
                with torch.no_grad(), self._autocast():
                    _, part = self._forward(
                        x[r : r + 1, :v],
                        None if entering is None else entering.select([r]).detach(),
                        None if cond is None else cond[r : r + 1],
                        None if reset is None else reset[r : r + 1],
                    )
                rows.append(part)
        return State.cat(rows)

    def _step(self, window: list[tuple[torch.Tensor, int, int]]) -> None:
        """One backward pass through the window's chunks and one optimizer step."""
        total = sum(every for *_, every in window)  # valid elements of the window on every rank
        if total == 0:  # nothing but padding: no gradient to follow
            return
        if len(window) == 1 and window[0][1] == total:
            loss = window[0][0]
        else:  # the mean over every valid element of the window (of every rank)
            loss = torch.stack([chunk * (n / total) for chunk, n, _ in window]).sum()
        if self.distributed is not None:  # DDP averages the ranks' gradients: undo the 1/world_size
            loss = loss * self.distributed.world_size
        self.optimizer.zero_grad(set_to_none=True)
        # The scaler is a pass-through except for fp16, where it scales the loss against underflow,
        # unscales before clipping and skips the step when the gradients overflowed.
        self._scaler.scale(loss).backward()
        if self.config.clip is not None:
            self._scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._params, self.config.clip)
        self._scaler.step(self.optimizer)
        self._scaler.update()
        if self._ema is not None:
            self._ema.update_parameters(self.model)

    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Mean loss, MSE and MAE over the valid elements of ``batches``, carrying state by the
        same policy as training, without gradients."""
        model = self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, squared error, absolute error
        count = 0
        state: State | None = None
        if self.distributed is not None:  # each rank its own lanes; the sums are added up below
            batches = self.distributed.shard(batches)
        with torch.no_grad(), self._threads():
            for batch in batches:
                x, y, cond, reset, mask, valid = self._to_device(batch)
                if self.config.state_policy == "batch":
                    state = self._batch_state(batch)
                with self._autocast():
                    y_hat, state = self._forward(x, state, cond, reset)
                y_hat = y_hat.to(y.dtype)
                nll = None
                if self._likelihood is not None:  # the loss is the NLL; the errors are the mean's
                    scale = _batch_scale(batch, y)
                    nll = self._loss(y_hat, y, mask, 1, scale, reduce=False)
                    y_hat = self._likelihood.mean(y_hat, scale)
                if mask is not None:
                    y = torch.where(mask, y, y_hat)  # padding contributes exactly zero
                diff = y_hat - y  # (batch, steps, out)
                loss_sum = self._loss_fn(y_hat, y, "sum") if nll is None else nll
                sums += torch.stack([loss_sum, diff.square().sum(), diff.abs().sum()])
                count += valid * y.shape[-1]
        model.train(was_training)
        if self.distributed is not None:
            every = self.distributed.sum(torch.cat([sums, sums.new_tensor([count])]))
            sums, count = every[:3], int(every[3].item())
        loss, mse, mae = (sums / max(count, 1)).tolist()
        return {"loss": loss, "mse": mse, "mae": mae}

    # -- one chunk ------------------------------------------------------------------------------

    def _to_device(
        self, batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
        """Move a Batch to the device. The mask and reset checks run on the CPU copies, so the
        common case (no padding, no reset) costs no device sync and no extra kernels."""
        dev, dtype = self.device, self._dtype()
        x = batch.x.to(dev, dtype, non_blocking=True)  # (batch, steps, in)
        y = batch.y.to(dev, dtype, non_blocking=True)  # (batch, steps, out)
        mask, mask_dev = batch.mask, None
        known = isinstance(batch, Batch)  # counts cached on the batch: no work after the first epoch
        valid = batch.valid_count if known else int(mask.sum())
        if valid != mask.numel():
            mask_dev = mask.to(dev, non_blocking=True).unsqueeze(-1)  # (batch, steps, 1)
        any_reset = batch.any_reset if known else bool(batch.reset.any())
        reset = batch.reset.to(dev, non_blocking=True) if any_reset else None
        cond = batch.cond.to(dev, dtype, non_blocking=True) if self._encodes else None
        return x, y, cond, reset, mask_dev, valid

    def _batch_state(self, batch: Any) -> State | None:
        state: State | None = getattr(batch, "state", None)  # StatefulBatches' batches bring none
        return None if state is None else state.to(self.device, self._dtype())

    def _forward(
        self, x: torch.Tensor, state: State | None, cond: torch.Tensor | None, reset: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        policy = self.config.state_policy
        net: Any = self._net if torch.is_grad_enabled() else self.model  # DDP only where gradients flow
        if self._last_step:  # a last-step (Keras) model trains on every step
            net = functools.partial(net, sequences=True)
        if policy == "batch":
            return net(x, state)  # type: ignore[no-any-return]
        if policy == "zeros":
            return net(x, self._zero_state(x))  # type: ignore[no-any-return]
        if policy == "encode":
            return net(x, None, cond=cond)  # type: ignore[no-any-return]
        kwargs: dict[str, Any] = {"cond": cond} if self._encodes else {}
        if state is not None and reset is not None:
            kwargs["reset"] = reset  # reset rows go to the model's initial state (encoded from cond)
        return net(x, state, **kwargs)  # type: ignore[no-any-return]

    def _loss(
        self,
        y_hat: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        n: int,
        scale: torch.Tensor | None = None,
        reduce: bool = True,
    ) -> torch.Tensor:
        """The mean loss over the ``n`` valid elements (the sum when not ``reduce``); ``mask`` None
        means all are valid. A likelihood model's loss is its NLL, with the series' ``scale``."""
        if self._likelihood is not None:
            if mask is not None:  # padding gets a harmless target (0 is in every support), then no weight
                y = torch.where(mask, y, torch.zeros_like(y))
            nll = self._likelihood.nll(y_hat, y, scale)  # (batch, steps, out)
            if mask is not None:
                nll = torch.where(mask, nll, torch.zeros_like(nll))
            return nll.sum() / max(n, 1) if reduce else nll.sum()
        if mask is None:
            return self._loss_fn(y_hat, y, "mean")
        # Where padded, the target becomes the (detached) prediction: zero loss, zero gradient,
        # even when the padding holds NaN.
        y = torch.where(mask, y, y_hat.detach())
        return self._loss_fn(y_hat, y, "sum") / max(n, 1)

    def _loss_fn(self, y_hat: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.config.loss == "mse":
            return F.mse_loss(y_hat, y, reduction=reduction)
        if self.config.loss == "mae":
            return F.l1_loss(y_hat, y, reduction=reduction)
        return F.huber_loss(y_hat, y, reduction=reduction, delta=self.config.huber_delta)

    def _zero_state(self, x: torch.Tensor) -> State:
        if self._zeros is None or self._zeros.batch_size != x.shape[0]:
            spec: StateSpec = self.model.state_spec  # type: ignore[assignment]
            self._zeros = State.zeros(spec, x.shape[0], dtype=x.dtype, device=x.device)
        return self._zeros

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()  # the hot path: nothing to enter
        return autocast(self.device, self.config.precision)

    def _dtype(self) -> torch.dtype:
        return self._params[0].dtype if self._params else torch.get_default_dtype()

    # -- epochs, checkpoints, resume ------------------------------------------------------------

    def _set_lr(self, epoch: int) -> float:
        cfg = self.config
        factor = 1.0
        if cfg.schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        elif cfg.schedule == "step":
            factor = cfg.gamma ** (epoch // cfg.step_size)
        elif cfg.schedule == "exponential":
            factor = cfg.gamma ** max(0, epoch + 1 - cfg.step_size)
        lr = cfg.lr * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _early_stopping(self, val_loss: float | None) -> None:
        h = self.history
        if val_loss is None:
            return
        if h.best_val_loss is None or val_loss < h.best_val_loss:
            h.best_epoch, h.best_val_loss, h.bad_epochs = self.epoch, val_loss, 0
            self._best_weights = {k: v.detach().clone() for k, v in self._validated().state_dict().items()}
            return
        h.bad_epochs += 1
        if self.config.patience is not None and h.bad_epochs >= self.config.patience:
            h.stopped_early = True

    def _save(self, run: Path) -> None:
        dist = self.distributed
        rank_rng = dist.rank_rng() if dist is not None else None  # a collective: every rank takes part
        if dist is not None and not dist.is_main:
            return  # rank 0 alone writes the run directory
        checkpoint.make_dirs(run)
        checkpoint.atomic_write(run / "metrics.csv", _metrics_csv(self.history.rows))
        checkpoint.save_checkpoint(
            run,
            epoch=self.epoch,
            model=self.model,
            optimizer=self.optimizer,
            train_config=self.config.to_json(),
            trainer={"history": self.history.to_json(), "layout": self._layout, **self._ema_count()},
            lane_state=self.lane_state,
            best_weights=self._best_weights,
            ema_weights=self._ema.module.state_dict() if self._ema is not None else None,
            keep=self.config.keep_checkpoints,
            rank_rng=rank_rng,
            distributed=dist.layout() if dist is not None else None,
        )

    def _resume(self, run: Path, train_batches: Iterable[Any]) -> None:
        found = checkpoint.list_checkpoints(run)
        if not found:
            raise CheckpointError(f"{run / 'checkpoints'}: no checkpoint to resume from")
        ckpt = checkpoint.load_checkpoint(found[-1], model=self.model)
        check_resume(ckpt, self.config, self.model, train_batches, self.optimizer)
        check_history(ckpt.trainer.get("history"), ckpt.epoch, ckpt.path / "checkpoint.json")
        self.model.load_state_dict(ckpt.model_state)
        # how this process computes the step (fused, foreach, ...) is its own, not the checkpoint's
        how = [{k: g[k] for k in _HOW_STEPPED if k in g} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt.path / 'optimizer.safetensors'}: does not fit the optimizer: {e}") from None
        for group, own in zip(self.optimizer.param_groups, how, strict=True):
            group.update(own)
        try:
            self.history = History.from_json(ckpt.trainer["history"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{ckpt.path / 'checkpoint.json'}: malformed trainer history: {e}") from None
        self.epoch = ckpt.epoch
        if self.distributed is not None:
            self.distributed.check_epoch(ckpt.epoch, ckpt.path)
        self.lane_state = None if ckpt.lane_state is None else ckpt.lane_state.to(self.device)
        self._best_weights = (
            None if ckpt.best_weights is None else {k: v.to(self.device) for k, v in ckpt.best_weights.items()}
        )
        self._ema = self._resume_average(ckpt)
        if self.distributed is not None:  # this rank's own generators when the ranks are as many
            self.distributed.restore_rng(ckpt.rank_rng, ckpt.rng, self.config.seed)
            if not self.distributed.is_main:
                return
        else:
            checkpoint.restore_rng(ckpt.rng)
        checkpoint.remove_stale_temp_files(run, "metrics.csv")
        checkpoint.atomic_write(run / "metrics.csv", _metrics_csv(self.history.rows))

    def _ema_count(self) -> dict[str, int]:
        return {} if self._ema is None else {"ema_updates": int(self._ema.n_averaged)}

    def _resume_average(self, ckpt: Any) -> AveragedModel | None:
        """The moving average as the checkpoint left it: its weights and how many steps it holds."""
        ema = self._new_average()
        if ema is None:
            return None
        count = ckpt.trainer.get("ema_updates")
        if ckpt.ema_weights is None or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            what = "no ema.safetensors" if ckpt.ema_weights is None else f"ema_updates {count!r}, not an int >= 0"
            raise CheckpointError(
                f"{ckpt.path}: trained with ema={self.config.ema} but holds {what}; the moving average cannot continue"
            )
        ema.module.load_state_dict({k: v.to(self.device) for k, v in ckpt.ema_weights.items()})
        ema.n_averaged.fill_(count)
        return ema

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Use ``config.threads`` CPU threads, or 1 for small models (they are bound by op
        dispatch and run faster single-threaded) and every core for larger ones."""
        spec = getattr(self.model, "state_spec", None)
        n = self.config.threads
        if n is None and spec is not None:
            n = default_threads(spec)
            if self.distributed is not None:  # the ranks of a node share its cores
                n = self.distributed.threads(n)
        previous = torch.get_num_threads()
        if self.device.type != "cpu" or n is None or n == previous:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _batch_scale(batch: Any, y: torch.Tensor) -> torch.Tensor | None:
    """A batch's per-row mean scale ``(batch, 1, n_out)`` on ``y``'s device, or None (unscaled)."""
    scale = getattr(batch, "scale", None)
    return None if scale is None else scale.to(y.device, y.dtype).unsqueeze(1)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device: {name!r} asked for, but CUDA is not available")
    return torch.device(name)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(spec: StateSpec) -> int:
    """CPU threads for a model with state ``spec``: 1 when every hidden size is at most 32 (small
    recurrent models are bound by op dispatch, run fastest single-threaded and keep a shared
    machine responsive), else every core this process may use."""
    return 1 if max(ls.hidden_size for ls in spec.layers) <= 32 else _cores()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _weighted_mean(losses: list[torch.Tensor], counts: list[int]) -> float:
    """``sum(loss_i * n_i) / sum(n_i)`` over chunk means: one device sync."""
    if not losses or not sum(counts):
        return float("nan")
    weights = torch.tensor(counts, dtype=torch.float64, device=losses[0].device)
    return float(torch.stack(losses).double() @ weights) / sum(counts)


def _metrics_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else repr(row[c]) for c in METRICS_COLUMNS])
    return out.getvalue().encode()

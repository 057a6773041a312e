"""Data-parallel stateful training under ``torchrun``: lanes pinned to ranks, gathered checkpoints.

The :class:`~hiddenstate.train.Trainer` calls :func:`setup` when it is made. Under ``torchrun``
(``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set) with ``TrainConfig(distributed="auto")`` it
joins the process group (gloo on the CPU, nccl on CUDA with one device per local rank) and
trains data-parallel; anywhere else it returns None and nothing changes.

Every rank is given the same global batches. Each rank owns one contiguous block of lanes and
keeps only those rows of every batch; blocks differ by at most one lane, and a smaller block is
padded with masked idle rows, so every rank runs the same chunks with the same shapes::

    global batch k   lanes 0 1 2 3 4
    rank 0           lanes 0 1 2          (its block: [0, 3))
    rank 1           lanes 3 4 pad        (its block: [3, 5), one masked padding row)

Each rank carries its own lanes' states from chunk to chunk on its own device, outside module
buffers (DDP runs with ``broadcast_buffers=False``, so no rank's state is overwritten). A rank's
loss is its sum over its valid elements divided by the global count of valid elements, times the
world size; DDP's mean of the ranks' gradients is then the gradient of one process on the global
batch, also when the ranks hold different numbers of valid elements. At each epoch's end the
lane states are gathered in global lane order, which is what checkpoints hold: any number of
ranks can resume them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hiddenstate.data.lanes import Batch, StatefulBatches
from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.state import State

__all__ = [
    "TIMEOUT_ENV",
    "Distributed",
    "LaneBlocks",
    "RankBatches",
    "lane_blocks",
    "launched",
    "mark_failed",
    "rank",
    "restarted",
    "setup",
]

#: Seconds a collective may wait for the other ranks before it fails (default 180); a rank that
#: died without its process ending never leaves the others hanging.
TIMEOUT_ENV = "HIDDENSTATE_COLLECTIVE_TIMEOUT"
_DEFAULT_TIMEOUT_S = 180.0
_MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week; far beyond it, torch's timeouts overflow
# Dropout masks differ by rank: rank r's torch generator is seeded with seed + r * _RANK_SEED_STRIDE.
_RANK_SEED_STRIDE = 1_000_003


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set)."""
    return all(os.environ.get(name) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def rank() -> int:
    """This process's rank under ``torchrun``, 0 outside it (read from the environment, no collective)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def restarted() -> bool:
    """Whether ``torchrun`` restarted the group after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0)."""
    return launched() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def lane_blocks(num_lanes: int, world_size: int) -> tuple[tuple[int, int], ...]:
    """``(first, stop)`` global lane ids of each rank's block: contiguous, sizes differing by at most one.

    >>> lane_blocks(5, 2)
    ((0, 3), (3, 5))
    >>> lane_blocks(4, 3)
    ((0, 2), (2, 3), (3, 4))
    """
    if num_lanes < world_size:
        raise ConfigError(
            f"{num_lanes} lanes cannot be spread over {world_size} ranks: every rank needs at least one lane; "
            "use fewer ranks or more lanes (a larger batch_size)"
        )
    base, extra = divmod(num_lanes, world_size)
    blocks, first = [], 0
    for r in range(world_size):
        stop = first + base + (r < extra)
        blocks.append((first, stop))
        first = stop
    return tuple(blocks)


@dataclass(frozen=True)
class LaneBlocks:
    """Which rank owns which lanes: ``blocks[r]`` is rank r's ``(first, stop)``; ``rows`` is the
    largest block, the rows every rank's batches have."""

    num_lanes: int
    blocks: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, num_lanes: int, world_size: int) -> LaneBlocks:
        return cls(num_lanes, lane_blocks(num_lanes, world_size))

    @property
    def rows(self) -> int:
        return max(stop - first for first, stop in self.blocks)

    def lane_ranks(self) -> list[int]:
        """The rank of every global lane id, in lane order."""
        return [r for r, (first, stop) in enumerate(self.blocks) for _ in range(first, stop)]

    def to_json(self) -> dict[str, Any]:
        return {
            "world_size": len(self.blocks),
            "lane_ranks": self.lane_ranks(),
            "blocks": [list(b) for b in self.blocks],
        }


_ROW_FIELDS = ("x", "y", "reset", "mask", "cond", "lanes")


def _num_rows(batch: Any, k: int) -> int:
    """The rows of ``batch``, one a lane, once it is one the ranks can split into their blocks."""
    missing = [name for name in _ROW_FIELDS if not hasattr(batch, name)]
    if missing:
        raise ConfigError(
            f"distributed training: batch {k} ({type(batch).__name__}) has no {', '.join(missing)}; "
            f"each rank keeps its lanes' rows of batches with {', '.join(_ROW_FIELDS)} (a Batch)"
        )
    if getattr(batch, "state", None) is not None:
        raise ConfigError(
            f"distributed training: batch {k} brings its own starting state (state_policy 'batch'), "
            "which the ranks cannot split into their lanes; train it in one process (TrainConfig(distributed='off'))"
        )
    return int(batch.x.shape[0])


@dataclass(frozen=True, eq=False)
class RankBatch(Batch):
    """A rank's rows of one global batch; ``global_valid`` counts the valid places of every rank's rows;
    ``scale`` ``(rows, n_out)`` is the rows' mean scale where the global batch has one (a ScaledBatch)."""

    global_valid: int = 0
    scale: torch.Tensor | None = None


class RankBatches:
    """The rows one rank owns of every global batch, padded with masked idle rows to ``blocks.rows``.

    ``batches`` is re-iterable and gives the same global batches on every rank (every batch with
    the same number of rows); ``set_epoch`` and ``len`` pass through.
    """

    def __init__(self, batches: Iterable[Any], blocks: LaneBlocks, rank: int) -> None:
        self.batches, self.blocks, self.rank = batches, blocks, rank
        self.num_lanes = blocks.rows
        self._cache: dict[int, RankBatch] | None = {} if isinstance(batches, StatefulBatches) else None

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[RankBatch]:
        for k, batch in enumerate(self.batches):
            if self._cache is not None and k in self._cache:  # StatefulBatches: the same batches every epoch
                yield self._cache[k]
                continue
            rows = self.rows(batch, k)
            if self._cache is not None:
                self._cache[k] = rows
            yield rows

    def rows(self, batch: Batch, k: int = 0) -> RankBatch:
        """This rank's block of ``batch``'s rows, padded to ``blocks.rows`` with masked idle rows."""
        if _num_rows(batch, k) != self.blocks.num_lanes:
            raise ShapeError(
                f"batch {k}: {batch.x.shape[0]} rows, but the lanes were laid out for {self.blocks.num_lanes}; "
                "every batch of a distributed run must have the same lanes"
            )
        first, stop = self.blocks.blocks[self.rank]
        pad = self.blocks.rows - (stop - first)

        def part(t: torch.Tensor, fill: bool | float) -> torch.Tensor:  # (rows, ...) of this rank
            own = t[first:stop]
            if not pad:
                return own
            return torch.cat([own, torch.full((pad, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)])

        scale = getattr(batch, "scale", None)  # a likelihood's per-row scale: it must stay with its rows
        return RankBatch(
            x=part(batch.x, 0.0),  # (rows, steps, n_in)
            y=part(batch.y, 0.0),  # (rows, steps, n_out)
            reset=part(batch.reset, False),  # (rows,)
            mask=part(batch.mask, False),  # (rows, steps): padding rows are all masked
            cond=part(batch.cond, 0.0),  # (rows, n_in)
            lanes=tuple(batch.lanes[first:stop]) + (None,) * pad,
            global_valid=batch.valid_count if isinstance(batch, Batch) else int(batch.mask.sum()),
            scale=None if scale is None else part(scale, 1.0),  # (rows, n_out); idle rows: 1, as ScaledBatches
        )


class Distributed:
    """This process's place in a ``torchrun`` group and the collectives the Trainer needs."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world_size)))
        self.device = device
        self.blocks: LaneBlocks | None = None  # set by the first shard of the training batches

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, shows the progress bar and writes files."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # -- model and data ---------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP, with no buffer broadcast before each forward (``broadcast_buffers=False``:
        rank 0's buffers never overwrite another rank's). Unused parameters are looked for per chunk
        unless every parameter runs in every chunk (an initial state or encoder only runs where a
        lane resets; a direct head never runs in training)."""
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        from hiddenstate.model import SequenceModel

        always_used = isinstance(model, SequenceModel) and model.encoder is None and model.learned is None
        always_used = always_used and model.direct_head is None
        kwargs: dict[str, Any] = {"broadcast_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            kwargs = {"forward_sync_buffers": False}  # the same, without the deprecation warning (torch >= 2.13)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=not always_used, **kwargs)

    def shard(self, batches: Iterable[Any], *, training: bool = False) -> RankBatches:
        """This rank's block of lanes of ``batches`` (the same global batches on every rank).

        The ranks check that they were given the same layout (number of batches and lanes).
        """
        if isinstance(batches, RankBatches):
            return batches
        num_lanes = getattr(batches, "num_lanes", None)
        if not isinstance(num_lanes, int):
            first = next(iter(batches), None)
            if first is None:
                raise ConfigError("distributed training: the batches are empty")
            num_lanes = _num_rows(first, 0)
        length = len(batches) if hasattr(batches, "__len__") else -1  # type: ignore[arg-type]
        self.check_same("batches (number, lanes)", [length, num_lanes])
        blocks = LaneBlocks.of(num_lanes, self.world_size)
        if training:
            self.blocks = blocks
        return RankBatches(batches, blocks, self.rank)

    def threads(self, n: int) -> int:
        """CPU threads per rank: the ranks of one node share its cores."""
        return max(1, n // self.local_world_size)

    def seed(self, seed: int) -> None:
        """Seed this rank's torch generator apart from the others' so that dropout masks differ by
        rank (rank 0 keeps ``seed``, as one process would); Python's and numpy's stay equal."""
        if self.rank:
            torch.manual_seed(seed + self.rank * _RANK_SEED_STRIDE)

    # -- collectives ----------------------------------------------------------------------------

    def _tensor(self, values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(list(values), dtype=dtype, device=self.device)

    def check_same(self, what: str, values: Sequence[int]) -> None:
        """Raise ConfigError on every rank when the ranks' ``values`` differ."""
        mine = self._tensor(values, torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        seen = [t.tolist() for t in every]
        if any(v != seen[0] for v in seen):
            listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
            raise ConfigError(f"distributed training: the ranks were given different {what} ({listing})")

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on some rank."""
        t = self._tensor([float(flag)], torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the ranks (on this rank's device)."""
        out = t.to(self.device).clone()
        dist.all_reduce(out)
        return out

    def gather_state(self, state: State) -> State:
        """Every lane's state, rows in global lane order, from each rank's padded block of rows."""
        blocks = self.blocks
        if blocks is None:
            raise ConfigError("gather_state: no training batches were sharded yet")
        parts: list[list[torch.Tensor]] = [[] for _ in range(self.world_size)]
        for t in state.tensors():  # (rows, hidden) per layer tensor
            every = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(every, t.contiguous())
            for r, (first, stop) in enumerate(blocks.blocks):
                parts[r].append(every[r][: stop - first])
        names = state.spec.names
        return State.cat([State.from_dict(state.spec, dict(zip(names, p, strict=True))) for p in parts])

    def rank_rng(self) -> list[bytes]:
        """Every rank's random generator states (safetensors bytes each), in rank order."""
        from hiddenstate.runs.files import tensor_bytes
        from hiddenstate.runs.snapshot import capture_rng, rng_parts

        tensors, meta = rng_parts(capture_rng())
        return self.gather_bytes(tensor_bytes(tensors, {"rng": json.dumps(meta)}))

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order (all_gather of padded uint8 tensors)."""
        size = self._tensor([len(data)], torch.int64)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        mine = mine.to(self.device)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        return [bytes(t[: int(s.item())].cpu().numpy().tobytes()) for t, s in zip(every, sizes, strict=True)]

    def layout(self) -> dict[str, Any] | None:
        """The manifest's record: ``world_size``, every lane's rank and the blocks."""
        return None if self.blocks is None else self.blocks.to_json()

    def restore_rng(self, rank_rng: Sequence[Mapping[str, Any]] | None, rng: Mapping[str, Any], seed: int) -> None:
        """Put back this rank's generators from a checkpoint: its own when the checkpoint has them
        (the same number of ranks: bitwise resume), else rank 0's, with this rank's torch seed."""
        from hiddenstate.runs.snapshot import restore_rng

        if rank_rng and self.rank < len(rank_rng):
            restore_rng(rank_rng[self.rank])
            return
        restore_rng(rng)
        self.seed(seed)

    def should_resume(self, run: Path | None, resume: bool) -> bool:
        """``resume``, or True when torchrun restarted the group and ``run`` holds a checkpoint."""
        if resume or run is None or not restarted():
            return resume
        from hiddenstate.runs.run import list_checkpoints

        return bool(list_checkpoints(run))

    def check_epoch(self, epoch: int, path: Path) -> None:
        self.check_same(f"checkpoints to resume from (this rank read {path})", [epoch])


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}: expected seconds, got {raw!r}") from None
    if not 0 < seconds <= _MAX_TIMEOUT_S:  # also refuses nan and inf: every wait has an end
        raise ConfigError(f"{TIMEOUT_ENV}: expected seconds > 0 and at most {_MAX_TIMEOUT_S:.0f} (a week), got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def _device(name: str) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device: {name!r} asked for, but CUDA is not available")
    if name not in ("auto", "cuda") and torch.device(name).index != local:
        raise ConfigError(
            f"TrainConfig.device {name!r}: under torchrun each rank uses cuda:LOCAL_RANK (here cuda:{local}); "
            "pass 'cuda' or 'auto'"
        )
    if local >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local}: this node has {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", local)


def setup(config: Any) -> Distributed | None:
    """Join the ``torchrun`` group for a Trainer with ``config`` (a TrainConfig), or None when
    not launched by torchrun or ``config.distributed == "off"``.

    The backend is nccl on CUDA (``cuda:LOCAL_RANK``) and gloo on the CPU; collectives time out
    after ``HIDDENSTATE_COLLECTIVE_TIMEOUT`` seconds. A process group the caller made already is
    used as it is.
    """
    if getattr(config, "distributed", "auto") == "off" or not launched():
        return None
    device = _device(config.device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        timeout = _timeout()
        # torchrun keeps one TCP store across restarts; a restarted group that read the keys of the
        # group before it would try to connect to dead ranks. So each attempt has its own key prefix.
        store, rank_, world_size = next(dist.rendezvous("env://", timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"hiddenstate/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank_, world_size=world_size, timeout=timeout, **kwargs)
        _install_failure_report()
        import atexit

        atexit.register(_destroy)
    return Distributed(device)


_failed = False  # set when this rank dies of an exception: then no rank is waited for at exit


def mark_failed() -> None:
    """Say that this rank is ending with an error it has reported itself (as the command line
    does): at exit it leaves the group at once instead of waiting for ranks that wait for it."""
    global _failed
    _failed = True


def _destroy() -> None:
    """At exit: wait for the other ranks, then leave the group. A rank that leaves while another
    still talks to it makes gloo abort that other process."""
    if not dist.is_initialized():
        return
    if not _failed:
        with contextlib.suppress(Exception):  # a lost rank: the barrier times out, the exit goes on
            dist.barrier()
    dist.destroy_process_group()


def _install_failure_report() -> None:
    """On an uncaught exception, name this rank and the exception on stderr and in torchrun's
    error file, so that the group's failure summary says which rank failed and why."""
    previous = sys.excepthook

    def report(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        mark_failed()
        where = f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}"
        message = "".join(traceback.format_exception_only(kind, error)).strip()
        print(f"hiddenstate: {where} failed: {message}", file=sys.stderr, flush=True)
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")  # torchrun shows it in its failure summary
        if error_file:
            stack = "".join(traceback.format_exception(kind, error, tb))
            info = {"py_callstack": stack, "timestamp": str(int(time.time()))}
            record = {"message": {"message": f"{kind.__name__}: {error}", "extraInfo": info}}
            with contextlib.suppress(OSError):  # the report must not hide the error itself
                Path(error_file).write_text(json.dumps(record))
        previous(kind, error, tb)

    sys.excepthook = report

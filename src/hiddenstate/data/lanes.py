"""Batches for stateful training: the lane layout, a stateless window sampler, and a checker.

A *lane* is one row of a stateful batch; a *chunk* is one truncated-BPTT window of ``steps``
rows. :class:`StatefulBatches` lays series into lanes so that row i of batch k+1 continues row i
of batch k, which is what carrying the state across batches assumes. :func:`check_continuity`
proves that of any batch list, and :class:`WindowSampler` gives shuffled independent windows
for comparison. All three speak :class:`Batch`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import ConfigError, ContinuityError, DataError, ShapeError

__all__ = ["Batch", "StatefulBatches", "WindowSampler", "check_continuity"]

Lane = tuple[int, int] | None  # (series_index, start_row) of a row's chunk, or None for an idle row
ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch of chunks, one chunk per row (lane).

    - ``x`` ``(batch, steps, n_in)``: inputs at rows ``t0 .. t0+steps-1`` of the row's series.
    - ``y`` ``(batch, steps, n_out)``: next-step targets, rows ``t0+1 .. t0+steps``.
    - ``reset`` ``(batch,)`` bool: the row starts a new series here (its state starts fresh).
    - ``mask`` ``(batch, steps)`` bool: False on padding past a series' end; leave it out of the loss.
    - ``cond`` ``(batch, n_in)``: the true observation before the chunk, row ``t0-1``.
    - ``lanes``: per row ``(series_index, t0)``, or None for an idle row.

    The tensors of batches from :class:`StatefulBatches` share memory with it; do not modify them
    in place.
    """

    x: torch.Tensor
    y: torch.Tensor
    reset: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    lanes: tuple[Lane, ...]

    def __post_init__(self) -> None:
        if self.x.dim() != 3:
            raise ShapeError(f"Batch x: expected (batch, steps, n_in), got {tuple(self.x.shape)}")
        b, steps, n_in = self.x.shape
        if self.y.dim() != 3 or tuple(self.y.shape[:2]) != (b, steps):
            raise ShapeError(f"Batch y: expected (batch={b}, steps={steps}, n_out), got {tuple(self.y.shape)}")
        for name, t, shape, dims in (
            ("reset", self.reset, (b,), "(batch,)"),
            ("mask", self.mask, (b, steps), "(batch, steps)"),
            ("cond", self.cond, (b, n_in), "(batch, n_in)"),
        ):
            if tuple(t.shape) != shape:
                raise ShapeError(f"Batch {name}: expected {dims} = {shape}, got {tuple(t.shape)}")
        if len(self.lanes) != b:
            raise ShapeError(f"Batch lanes: expected one entry per row ({b}), got {len(self.lanes)}")

    @cached_property
    def valid_count(self) -> int:
        """How many (row, step) places hold data, not padding."""
        return int(self.mask.sum())

    @cached_property
    def any_reset(self) -> bool:
        """Whether some row starts a new series in this batch."""
        return bool(self.reset.any())

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps(self) -> int:
        return int(self.x.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        move = {n: getattr(self, n).to(device, non_blocking=non_blocking) for n in ("x", "y", "reset", "mask", "cond")}
        return Batch(lanes=self.lanes, **move)

    def __repr__(self) -> str:
        return (
            f"Batch(batch={self.batch_size}, steps={self.steps}, n_in={self.x.shape[2]}, "
            f"n_out={self.y.shape[2]}, resets={int(self.reset.sum())}, valid={int(self.mask.sum())})"
        )


def _as_series(inputs: Sequence[ArrayLike] | ArrayLike, targets: Sequence[ArrayLike] | ArrayLike, min_rows: int):
    """Validate inputs/targets as lists of 2-D float64 arrays with matching rows."""
    xs = [inputs] if isinstance(inputs, np.ndarray | torch.Tensor) else list(inputs)
    ys = [targets] if isinstance(targets, np.ndarray | torch.Tensor) else list(targets)
    if len(xs) != len(ys):
        raise ShapeError(f"{len(xs)} input series but {len(ys)} target series")
    if not xs:
        raise ShapeError("no series given")
    xs = [np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64) for a in xs]
    ys = [np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64) for a in ys]
    for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
        for name, a, first in (("inputs", x, xs[0]), ("targets", y, ys[0])):
            if a.ndim != 2 or a.shape[1] != first.shape[1]:
                raise ShapeError(f"{name}[{j}]: expected (steps, {first.shape[-1]}), got {tuple(a.shape)}")
            if not np.isfinite(a).all():
                r, c = np.argwhere(~np.isfinite(a))[0]
                raise DataError(f"{name}[{j}]: non-finite value {a[r, c]} at row {r}, column {c}")
        if x.shape[0] != y.shape[0]:
            raise ShapeError(f"series {j}: inputs have {x.shape[0]} rows, targets {y.shape[0]}")
        if x.shape[0] < min_rows:
            raise DataError(f"series {j} has {x.shape[0]} rows; it needs at least {min_rows}")
    return xs, ys


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating point torch dtype, got {dtype}")
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:  # bfloat16 has no numpy twin: build in float32, convert once
        return np.dtype(np.float32)


class StatefulBatches:
    """Series laid into lanes for truncated BPTT: row i of batch k+1 continues row i of batch k.

    Args:
        inputs: one ``(steps_j, n_in)`` array per series (or one array for a single series).
        targets: one ``(steps_j, n_out)`` array per series, row-aligned with ``inputs``.
        batch_size: the most lanes; there are ``num_lanes = min(batch_size, pieces)`` of them.
        steps: rows per chunk (the BPTT window ``L``).
        dtype: of ``x``, ``y`` and ``cond``.
        split: cut series longer than the balanced lane length into contiguous pieces on chunk
            boundaries (a single series then fills every lane, as PyTorch's word-language-model
            ``batchify`` does). Each piece starts with ``reset`` and its own true ``cond``. With
            ``split=False`` every series stays whole in one lane.

    A chunk that starts at row ``t0`` of series ``j`` holds ``x = inputs[j][t0:t0+L]``, the
    next-step targets ``y = targets[j][t0+1:t0+L+1]`` and ``cond = inputs[j][t0-1]``, the true
    observation before the chunk. A series' first chunk therefore starts at row 1::

        series j, rows:  0    1    2   ...   L   L+1  ...  n-2  n-1
        chunk 0   cond   *
                  x           [1 ............ L]
                  y                [2 ............ L+1]
        chunk 1   cond                       *
                  x                               [L+1 ... n-2]  pad
                  y                                    [... n-1]  pad

    Pieces are dealt longest first to the currently shortest lane, so lanes end close together.
    Three series a (5 chunks), b (3) and c (2) in two lanes with ``split=False``::

                    batch 0   batch 1   batch 2   batch 3   batch 4
        lane 0    | a0  R   | a1      | a2      | a3      | a4 pad  |
        lane 1    | b0  R   | b1      | b2 pad  | c0  R   | c1 pad  |

        R    reset[i] is True: the lane starts a new series (or piece) in this batch
        pad  steps past the series' end: x and y are 0 and mask is False
        a lane that has run out of pieces is idle: lanes[i] is None, mask all False

    Everything is laid out once in numpy; a batch is a view of precomputed tensors.

    >>> sb = StatefulBatches([np.arange(12.0)[:, None]], [np.arange(12.0)[:, None]], batch_size=2, steps=3)
    >>> len(sb), sb.num_lanes, sb.assignment
    (2, 2, (((0, 1, 2),), ((0, 7, 2),)))
    >>> b = sb[0]
    >>> b.x[:, :, 0].tolist(), b.cond[:, 0].tolist(), b.lanes
    ([[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]], [0.0, 6.0], ((0, 1), (0, 7)))
    >>> sb[1].mask.tolist()
    [[True, True, True], [True, False, False]]
    """

    def __init__(
        self,
        inputs: Sequence[ArrayLike] | ArrayLike,
        targets: Sequence[ArrayLike] | ArrayLike,
        batch_size: int,
        steps: int,
        *,
        dtype: torch.dtype = torch.float32,
        split: bool = True,
    ) -> None:
        self.batch_size = _positive_int("batch_size", batch_size)
        self.steps = span = _positive_int("steps", steps)
        xs, ys = _as_series(inputs, targets, min_rows=3)
        self.num_series = len(xs)
        self.lengths = tuple(x.shape[0] for x in xs)
        chunks = [math.ceil((n - 2) / span) for n in self.lengths]  # rows 1 .. n-2 are inputs

        # pieces: (series, first_row, n_chunks); a long series is cut into near-equal pieces
        target = math.ceil(sum(chunks) / self.batch_size) if split else max(chunks)
        pieces: list[tuple[int, int, int]] = []
        for j, c in enumerate(chunks):
            k = math.ceil(c / target)
            first = 0
            for p in range(k):
                size = c // k + (p < c % k)
                pieces.append((j, 1 + first * span, size))
                first += size
        self.num_lanes = n_lanes = min(self.batch_size, len(pieces))

        # longest piece first, to the currently shortest lane (ties: the lowest lane)
        heap = [(0, lane) for lane in range(n_lanes)]
        assignment: list[list[tuple[int, int, int]]] = [[] for _ in range(n_lanes)]
        for piece in sorted(pieces, key=lambda p: -p[2]):
            used, lane = heapq.heappop(heap)
            assignment[lane].append(piece)
            heapq.heappush(heap, (used + piece[2], lane))
        self.assignment = tuple(tuple(a) for a in assignment)
        self._num_batches = nb = max(used for used, _ in heap)

        np_dtype = _numpy_dtype(dtype)
        n_in, n_out = xs[0].shape[1], ys[0].shape[1]
        x = np.zeros((n_lanes, nb * span, n_in), np_dtype)  # lane-major while filling
        y = np.zeros((n_lanes, nb * span, n_out), np_dtype)
        mask = np.zeros((n_lanes, nb * span), bool)
        reset = np.zeros((nb, n_lanes), bool)
        cond = np.zeros((nb, n_lanes, n_in), np_dtype)
        lanes: list[list[Lane]] = [[None] * n_lanes for _ in range(nb)]
        for lane, lane_pieces in enumerate(assignment):
            k = 0  # the batch this piece starts in
            for j, row, c in lane_pieces:
                valid = min(c * span, self.lengths[j] - 1 - row)  # inputs rows row .. row+valid-1
                a = k * span
                x[lane, a : a + valid] = xs[j][row : row + valid]
                y[lane, a : a + valid] = ys[j][row + 1 : row + 1 + valid]
                mask[lane, a : a + valid] = True
                reset[k, lane] = True
                cond[k : k + c, lane] = xs[j][row - 1 + span * np.arange(c)]
                for q in range(c):
                    lanes[k + q][lane] = (j, row + q * span)
                k += c

        def batch_major(a: np.ndarray) -> torch.Tensor:  # (n_lanes, nb*span, ...) -> (nb, n_lanes, span, ...)
            a = a.reshape(n_lanes, nb, span, *a.shape[2:]).swapaxes(0, 1)
            return torch.from_numpy(np.ascontiguousarray(a))

        self._x = batch_major(x).to(dtype)  # (batches, lanes, steps, n_in)
        self._y = batch_major(y).to(dtype)  # (batches, lanes, steps, n_out)
        self._mask = batch_major(mask)  # (batches, lanes, steps)
        self._reset = torch.from_numpy(reset)  # (batches, lanes)
        self._cond = torch.from_numpy(cond).to(dtype)  # (batches, lanes, n_in)
        self._lanes = tuple(tuple(row) for row in lanes)
        self.valid_steps = int(mask.sum())
        self._built: list[Batch | None] = [None] * nb

    def __len__(self) -> int:
        return self._num_batches

    def __getitem__(self, k: int) -> Batch:
        if not -len(self) <= k < len(self):
            raise IndexError(f"batch {k} out of range; there are {len(self)} batches")
        k %= len(self)
        batch = self._built[k]
        if batch is None:  # built once: training walks the same batches every epoch
            batch = Batch(self._x[k], self._y[k], self._reset[k], self._mask[k], self._cond[k], self._lanes[k])
            self._built[k] = batch
        return batch

    def __iter__(self) -> Iterator[Batch]:
        for k in range(len(self)):
            yield self[k]

    def __repr__(self) -> str:
        return (
            f"StatefulBatches(series={self.num_series}, lanes={self.num_lanes}, steps={self.steps}, "
            f"batches={len(self)}, valid_steps={self.valid_steps})"
        )


class WindowSampler:
    """Independent windows for stateless training, in shuffled batches of :class:`Batch`.

    Each window is ``x = inputs[j][s:s+window]``, ``y = targets[j][s+1:s+window+1]`` and
    ``cond = inputs[j][s-1]`` for every start ``s = 1, 1+stride, ...`` that fits, so a series of
    ``n`` rows gives ``n - window - 1`` windows at stride 1. Every row resets; there is no state
    to carry. The last batch is padded with idle rows (``lanes`` None, ``mask`` False).

    Each iteration reshuffles with ``seed`` and the epoch number, then counts the epoch up;
    :meth:`set_epoch` sets it (to resume a run exactly).

    >>> ws = WindowSampler([np.arange(8.0)[:, None]], [np.arange(8.0)[:, None]], window=3, batch_size=2, shuffle=False)
    >>> ws.num_windows, len(ws)
    (4, 2)
    >>> b = next(iter(ws))
    >>> b.x[:, :, 0].tolist(), b.y[:, :, 0].tolist(), b.lanes
    ([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [[2.0, 3.0, 4.0], [3.0, 4.0, 5.0]], ((0, 1), (0, 2)))
    """

    def __init__(
        self,
        inputs: Sequence[ArrayLike] | ArrayLike,
        targets: Sequence[ArrayLike] | ArrayLike,
        window: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        stride: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.window = w = _positive_int("window", window)
        self.batch_size = self.num_lanes = _positive_int("batch_size", batch_size)
        self.stride = _positive_int("stride", stride)
        xs, ys = _as_series(inputs, targets, min_rows=1)
        self.shuffle, self.seed, self.epoch, self.dtype = shuffle, int(seed), 0, dtype
        starts = [np.arange(1, x.shape[0] - w, self.stride) for x in xs]  # s + w + 1 <= n
        self._series = np.concatenate([np.full(len(s), j) for j, s in enumerate(starts)]).astype(np.int64)
        self._starts = np.concatenate(starts).astype(np.int64)
        if not len(self._starts):
            raise DataError(f"no series is long enough for a window of {w} steps (it needs {w + 2} rows)")
        offsets = np.cumsum([0] + [x.shape[0] for x in xs[:-1]])
        self._first = offsets[self._series] + self._starts  # row of each window in the stacked arrays
        np_dtype = _numpy_dtype(dtype)
        self._x = np.concatenate(xs).astype(np_dtype)  # (total rows, n_in)
        self._y = np.concatenate(ys).astype(np_dtype)  # (total rows, n_out)

    @property
    def num_windows(self) -> int:
        return len(self._starts)

    def __len__(self) -> int:
        return math.ceil(self.num_windows / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: np.ndarray | None) -> Iterator[Batch]:
        size, w = self.batch_size, self.window
        for a in range(0, self.num_windows, size):
            sel = order[a : a + size] if order is not None else np.arange(a, min(a + size, self.num_windows))
            n = len(sel)
            rows = self._first[sel][:, None] + np.arange(w)  # (n, w)
            x = np.zeros((size, w, self._x.shape[1]), self._x.dtype)
            y = np.zeros((size, w, self._y.shape[1]), self._y.dtype)
            cond = np.zeros((size, self._x.shape[1]), self._x.dtype)
            x[:n], y[:n], cond[:n] = self._x[rows], self._y[rows + 1], self._x[rows[:, 0] - 1]
            mask = np.zeros((size, w), bool)
            mask[:n] = True
            lanes: tuple[Lane, ...] = tuple(
                (int(j), int(s)) for j, s in zip(self._series[sel], self._starts[sel], strict=True)
            ) + (None,) * (size - n)
            yield Batch(
                torch.from_numpy(x).to(self.dtype),
                torch.from_numpy(y).to(self.dtype),
                torch.ones(size, dtype=torch.bool),
                torch.from_numpy(mask),
                torch.from_numpy(cond).to(self.dtype),
                lanes,
            )

    def __repr__(self) -> str:
        return f"WindowSampler(windows={self.num_windows}, window={self.window}, batch_size={self.batch_size})"


def check_continuity(
    batches: Iterable[Batch],
    inputs: Sequence[ArrayLike] | ArrayLike | None = None,
    targets: Sequence[ArrayLike] | ArrayLike | None = None,
) -> int:
    """Prove the lane contract of ``batches`` or raise ContinuityError at the first break.

    Checked from ``lanes``, ``reset`` and ``mask``: every batch has the same shape; a row that
    does not reset continues its predecessor, ``(j, t0)`` after ``(j, t0 - steps)`` with no
    padding in between; a lane's first row resets; padding only ends a row; idle rows are fully
    masked. Given the ``inputs`` (and ``targets``) the batches were made from, also checks that
    ``x``, ``y`` and ``cond`` hold exactly those rows and that padding starts at a series' end.
    Returns the number of batches checked.
    """
    xs = ys = None
    if inputs is not None:
        xs, ys = _as_series(inputs, inputs if targets is None else targets, min_rows=1)
        if targets is None:
            ys = None
    prev: Batch | None = None
    count = 0
    for k, b in enumerate(batches):
        count += 1
        if not isinstance(b, Batch):
            raise ContinuityError(f"batch {k}: expected a Batch, got {type(b).__name__}")
        n_lanes, span = b.mask.shape
        if prev is not None and (n_lanes, span) != tuple(prev.mask.shape):
            raise ContinuityError(
                f"batch {k}: shape (batch={n_lanes}, steps={span}) differs from batch {k - 1}'s "
                f"(batch={prev.mask.shape[0]}, steps={prev.mask.shape[1]}); lanes cannot change"
            )
        mask, reset = b.mask.cpu().numpy(), b.reset.cpu().numpy()
        valid = mask.sum(axis=1)
        prev_valid = prev.mask.cpu().numpy().sum(axis=1) if prev is not None else None
        for i in range(n_lanes):
            at, lane, n = f"batch {k}, row {i}", b.lanes[i], int(valid[i])
            if not mask[i, :n].all():
                raise ContinuityError(f"{at}: the mask has a gap; padding may only end a row")
            if lane is None:
                if n:
                    raise ContinuityError(f"{at}: an idle row (lanes None) has {n} unmasked steps")
                continue
            j, t0 = lane
            if n == 0:
                raise ContinuityError(f"{at}: (series {j}, start_row {t0}) has no unmasked step")
            if not reset[i]:
                before = prev.lanes[i] if prev is not None else None
                if before is None:
                    raise ContinuityError(
                        f"{at}: (series {j}, start_row {t0}) does not reset, but the lane has nothing before it"
                    )
                pj, pt = before
                if (j, t0) != (pj, pt + span):
                    raise ContinuityError(
                        f"{at}: (series {j}, start_row {t0}) does not reset, but batch {k - 1} row {i} holds "
                        f"(series {pj}, start_row {pt}), so it should continue at (series {pj}, start_row {pt + span})"
                    )
                if prev_valid is not None and prev_valid[i] < span:
                    raise ContinuityError(
                        f"{at}: (series {j}, start_row {t0}) continues batch {k - 1} row {i}, which was padded"
                    )
            if xs is not None:
                _check_values(at, b, i, j, t0, n, xs, ys)
        prev = b
    return count


def _check_values(
    at: str, b: Batch, i: int, j: int, t0: int, n: int, xs: list[np.ndarray], ys: list[np.ndarray] | None
) -> None:
    if not 0 <= j < len(xs) or t0 < 1 or t0 + n > len(xs[j]) - 1:
        raise ContinuityError(f"{at}: (series {j}, start_row {t0}) with {n} steps is outside the given series")
    if n < b.steps and t0 + n != len(xs[j]) - 1:
        raise ContinuityError(f"{at}: padding starts at row {t0 + n} of series {j}, before its end")

    def same(t: torch.Tensor, a: np.ndarray) -> bool:
        return torch.equal(t.cpu(), torch.from_numpy(a).to(t.dtype))

    if not same(b.x[i, :n], xs[j][t0 : t0 + n]):
        raise ContinuityError(f"{at}: x differs from inputs[{j}][{t0}:{t0 + n}]")
    if not same(b.cond[i], xs[j][t0 - 1]):
        raise ContinuityError(f"{at}: cond differs from inputs[{j}][{t0 - 1}]")
    if ys is not None and not same(b.y[i, :n], ys[j][t0 + 1 : t0 + 1 + n]):
        raise ContinuityError(f"{at}: y differs from targets[{j}][{t0 + 1}:{t0 + 1 + n}]")

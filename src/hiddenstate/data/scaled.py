"""Stateful batches that carry each series' mean scale, for likelihood training.

DeepAR's mean scaler divides a series by ``scale = mean(|y|)`` before the network reads it and
folds the scale back into the output distribution (:mod:`hiddenstate.likelihood`). A series
keeps one scale for its whole life here, since its state is carried over all of it. Lay out the
*scaled* inputs and the targets in their own units with :class:`StatefulBatches`, then wrap them:
each :class:`ScaledBatch` adds ``scale`` ``(batch, n_out)``, the scale of the series each row
(lane) holds (1 on idle rows), which the Trainer passes to the likelihood.

>>> y = [np.full((10, 1), 4.0), np.full((10, 1), 2.0)]
>>> sb = StatefulBatches([a / 4.0 for a in y[:1]] + [y[1] / 2.0], y, batch_size=2, steps=4)
>>> ScaledBatches(sb, np.array([[4.0], [2.0]]))[0].scale[:, 0].tolist()
[4.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hiddenstate.data.lanes import Batch, StatefulBatches
from hiddenstate.errors import ShapeError

__all__ = ["ScaledBatch", "ScaledBatches"]


@dataclass(frozen=True, eq=False)
class ScaledBatch(Batch):
    """A :class:`Batch` plus ``scale`` ``(batch, n_out)``: each row's series' mean scale."""

    scale: torch.Tensor | None = None


class ScaledBatches:
    """``batches`` (a :class:`StatefulBatches`) with ``scales`` ``(num_series, n_out)`` attached per row.

    ``score_from`` ``(num_series,)``: leave targets at rows before ``score_from[j]`` of series ``j``
    out of the mask (the state still runs over them), to score only a held-out tail.
    """

    def __init__(self, batches: StatefulBatches, scales: Any, score_from: Any = None) -> None:
        s = torch.as_tensor(np.asarray(scales, dtype=np.float64))
        if s.dim() != 2 or s.shape[0] != batches.num_series:
            raise ShapeError(f"scales: expected (num_series={batches.num_series}, n_out), got {tuple(s.shape)}")
        self.batches = batches
        self._scales = torch.cat([s, torch.ones(1, s.shape[1], dtype=s.dtype)])  # the last row: idle lanes
        self._built: dict[int, ScaledBatch] = {}
        self._score_from = None if score_from is None else [int(v) for v in score_from]
        if self._score_from is not None and len(self._score_from) != batches.num_series:
            raise ShapeError(f"score_from: expected {batches.num_series} rows, got {len(self._score_from)}")

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> ScaledBatch:
        k %= len(self)
        if k not in self._built:
            b = self.batches[k]
            idle = self._scales.shape[0] - 1
            rows = torch.tensor([lane[0] if lane is not None else idle for lane in b.lanes])
            scale = self._scales[rows].to(b.y.dtype)  # (batch, n_out)
            mask = b.mask
            if self._score_from is not None:  # target row of step i is t0 + 1 + i
                first = torch.tensor([self._score_from[ln[0]] - ln[1] - 1 if ln else 0 for ln in b.lanes])
                mask = mask & (torch.arange(b.steps)[None, :] >= first[:, None])
            self._built[k] = ScaledBatch(b.x, b.y, b.reset, mask, b.cond, b.lanes, scale)
        return self._built[k]

    def __iter__(self) -> Iterator[ScaledBatch]:
        for k in range(len(self)):
            yield self[k]

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
    """``batches`` (a :class:`StatefulBatches`) with ``scales`` ``(num_series, n_out)`` attached per row."""

    def __init__(self, batches: StatefulBatches, scales: Any) -> None:
        s = torch.as_tensor(np.asarray(scales, dtype=np.float64))
        if s.dim() != 2 or s.shape[0] != batches.num_series:
            raise ShapeError(f"scales: expected (num_series={batches.num_series}, n_out), got {tuple(s.shape)}")
        self.batches = batches
        self._scales = torch.cat([s, torch.ones(1, s.shape[1], dtype=s.dtype)])  # the last row: idle lanes
        self._built: dict[int, ScaledBatch] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> ScaledBatch:
        k %= len(self)
        if k not in self._built:
            b = self.batches[k]
            idle = self._scales.shape[0] - 1
            rows = torch.tensor([lane[0] if lane is not None else idle for lane in b.lanes])
            scale = self._scales[rows].to(b.y.dtype)  # (batch, n_out)
            self._built[k] = ScaledBatch(b.x, b.y, b.reset, b.mask, b.cond, b.lanes, scale)
        return self._built[k]

    def __iter__(self) -> Iterator[ScaledBatch]:
        for k in range(len(self)):
            yield self[k]

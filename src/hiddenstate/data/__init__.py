"""Data for stateful training: reading frames, splits, scaling, and the lane layout.

- :mod:`~hiddenstate.data.frames`: :class:`Series`, :class:`Dataset`, :func:`read_dataset`
  (CSV and Parquet, wide and long layouts) and the chronological :class:`Split`.
- :mod:`~hiddenstate.data.scaling`: :class:`StandardScaler`, fitted on the train split only.
- :mod:`~hiddenstate.data.lanes`: :class:`Batch`, :class:`StatefulBatches` (row i of the next
  batch continues row i of this one), :class:`WindowSampler` and :func:`check_continuity`.
- :mod:`~hiddenstate.data.synthetic`: :func:`synthetic_dataset`, the built-in data.
"""

from __future__ import annotations

from hiddenstate.data.frames import Dataset, Series, Split, read_dataset
from hiddenstate.data.lanes import Batch, StatefulBatches, WindowSampler, check_continuity
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.data.synthetic import synthetic_dataset

__all__ = [
    "Batch",
    "Dataset",
    "Series",
    "Split",
    "StandardScaler",
    "StatefulBatches",
    "WindowSampler",
    "check_continuity",
    "read_dataset",
    "synthetic_dataset",
]

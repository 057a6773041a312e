"""StandardScaler: per-column mean and population standard deviation, fitted on train rows only.

Fitting on the train split alone keeps the validation and test rows out of the normalisation,
as the ETT protocol asks. The scaler is a frozen value that round-trips through JSON exactly
(float64 written as its shortest repr), so a run directory stores it beside the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from hiddenstate.data.frames import Dataset
from hiddenstate.errors import ConfigError, DataError, ShapeError

__all__ = ["StandardScaler"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True, eq=False)
class StandardScaler:
    """``(x - mean) / std`` per column; a constant column gets std 1 (it is only centred).

    Constant means that the column's range is within float64 rounding of its values (1e-12
    relative), so a column whose computed std is 1e-15 rather than 0 counts as constant too.

    Build it with :meth:`fit`. ``transform``/``inverse_transform`` take numpy arrays or torch
    tensors of shape ``(..., n_columns)`` and return the same kind.

    >>> sc = StandardScaler.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    >>> sc.mean.tolist(), sc.std.tolist()
    ([2.0, 5.0], [1.0, 1.0])
    >>> sc.transform(np.array([[3.0, 6.0]])).tolist()
    [[1.0, 1.0]]
    >>> StandardScaler.from_json(sc.to_json()).select([1]).inverse_transform(np.array([[1.0]])).tolist()
    [[6.0]]
    """

    mean: np.ndarray
    std: np.ndarray
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if mean.shape != std.shape:
            raise ShapeError(f"StandardScaler: mean has {mean.size} columns, std has {std.size}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ConfigError("StandardScaler: mean and std must be finite and std > 0")
        columns = None if self.columns is None else tuple(str(c) for c in self.columns)
        if columns is not None and len(columns) != mean.size:
            raise ShapeError(f"StandardScaler: {mean.size} columns but {len(columns)} column names")
        mean.flags.writeable = False
        std.flags.writeable = False
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "columns", columns)

    @classmethod
    def fit(
        cls,
        data: np.ndarray | Sequence[np.ndarray] | Dataset,
        columns: Sequence[str] | None = None,
    ) -> StandardScaler:
        """Fit on ``(rows, n_columns)``, on several such arrays (rows stacked), or on a Dataset.

        A Dataset gives its column names; pass only its train split.
        """
        if isinstance(data, Dataset):
            columns = data.columns if columns is None else columns
            parts = data.arrays()
        elif isinstance(data, np.ndarray | torch.Tensor):
            parts = [np.asarray(data)]
        else:
            parts = [np.asarray(a) for a in data]
        if not parts or any(p.ndim != 2 for p in parts) or len({p.shape[1] for p in parts}) != 1:
            shapes = ", ".join(str(tuple(p.shape)) for p in parts) or "nothing"
            raise ShapeError(f"StandardScaler.fit: expected (rows, n_columns) arrays of one width, got {shapes}")
        rows = np.concatenate(parts).astype(np.float64, copy=False)  # (rows, n_columns)
        if rows.shape[0] == 0:
            raise DataError("StandardScaler.fit: no rows to fit on")
        if not np.isfinite(rows).all():
            r, c = np.argwhere(~np.isfinite(rows))[0]
            raise DataError(f"StandardScaler.fit: non-finite value {rows[r, c]} at row {r}, column {c}")
        std = rows.std(axis=0)  # population std (ddof=0), as ETT's protocol uses
        # a constant column (its spread below float64's noise: the std of 70 rows of 7.7 is 2.7e-15,
        # not 0) is only centred, else one new value would read as 1e13 standard deviations
        mean = rows.mean(axis=0)
        constant = rows.max(axis=0) - rows.min(axis=0) <= 1e-12 * np.maximum(1.0, np.abs(mean))
        return cls(mean, np.where(constant, 1.0, std), None if columns is None else tuple(columns))

    @property
    def n_columns(self) -> int:
        return int(self.mean.size)

    def _check(self, x: Any, what: str) -> None:
        if x.ndim < 1 or x.shape[-1] != self.n_columns:
            raise ShapeError(f"StandardScaler.{what}: expected (..., n_columns={self.n_columns}), got {tuple(x.shape)}")

    def _stats(self, x: ArrayT) -> tuple[Any, Any]:
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
            return (
                torch.tensor(self.mean.tolist(), dtype=dtype, device=x.device),
                torch.tensor(self.std.tolist(), dtype=dtype, device=x.device),
            )
        return self.mean, self.std

    def transform(self, x: ArrayT) -> ArrayT:
        """Original units to normalised units, ``(..., n_columns)``."""
        self._check(x, "transform")
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse_transform(self, x: ArrayT) -> ArrayT:
        """Normalised units back to original units, ``(..., n_columns)``."""
        self._check(x, "inverse_transform")
        mean, std = self._stats(x)
        return x * std + mean

    def select(self, indices: Sequence[int | str]) -> StandardScaler:
        """The scaler of some columns (by position, or by name when it knows its columns)."""
        idx: list[int] = []
        for i in indices:
            if isinstance(i, str):
                if self.columns is None or i not in self.columns:
                    raise DataError(f"StandardScaler.select: column {i!r} not among {self.columns}")
                idx.append(self.columns.index(i))
            elif not -self.n_columns <= int(i) < self.n_columns:
                raise ShapeError(f"StandardScaler.select: index {i} out of range for {self.n_columns} columns")
            else:
                idx.append(int(i))
        columns = None if self.columns is None else tuple(self.columns[i] for i in idx)
        return StandardScaler(self.mean[idx], self.std[idx], columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "standard",
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "columns": None if self.columns is None else list(self.columns),
        }

    @classmethod
    def from_json(cls, data: Any) -> StandardScaler:
        if not isinstance(data, dict) or data.get("kind", "standard") != "standard":
            raise ConfigError(f"not a StandardScaler in JSON: {str(data)[:80]}")
        try:
            mean = [float(m) for m in data["mean"]]
            std = [float(s) for s in data["std"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"StandardScaler in JSON needs numeric lists 'mean' and 'std': {e}") from None
        if not all(math.isfinite(v) for v in mean + std):
            raise ConfigError("StandardScaler in JSON: mean and std must be finite")
        return cls(np.array(mean), np.array(std), data.get("columns"))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StandardScaler)
            and self.columns == other.columns
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        cols = f", columns={self.columns}" if self.columns is not None else ""
        return f"StandardScaler(n_columns={self.n_columns}{cols})"

"""Series, Dataset, Split and read_dataset: time series read from CSV or Parquet files.

Two layouts are read::

    wide (one series, like ETT)              long (one series per id, like Nixtla and Darts)
    date,HUFL,...,OT                         unique_id,ds,y
    2024-01-01 00:00:00,4.10,...,20.00       a,2024-01-01 00:00,1.0
    2024-01-01 00:15:00,4.20,...,20.10       a,2024-01-01 00:15,1.2
                                             b,2024-01-01 00:00,7.0

Every error is a :class:`~hiddenstate.errors.DataError` that names the file, the column and the
*data row* (1-based, the header not counted; in a CSV file data row r is usually line r + 1).
Values are float64 throughout; timestamps are ``datetime64[ns]`` (time zones converted to UTC)
or numbers, and must increase strictly within each series.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, DataError, ShapeError

__all__ = ["Dataset", "Series", "Split", "read_dataset"]

LAYOUTS = ("auto", "wide", "long")
FILLS = ("error", "ffill")
SEGMENTS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Series:
    """One time series: ``values`` ``(steps, n_columns)`` float64, its column names and timestamps.

    >>> s = Series("a", np.arange(6.0).reshape(3, 2), ("x", "y"))
    >>> s
    Series(id='a', steps=3, columns=('x', 'y'))
    >>> s.slice(1, 3).values.tolist()
    [[2.0, 3.0], [4.0, 5.0]]
    """

    id: str
    values: np.ndarray
    columns: tuple[str, ...]
    time: np.ndarray | None = None

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(str(c) for c in self.columns)
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise ShapeError(
                f"series {self.id!r}: values must be (steps, n_columns={len(columns)}), got {tuple(values.shape)}"
            )
        time = None if self.time is None else np.asarray(self.time)
        if time is not None and time.shape != (values.shape[0],):
            raise ShapeError(f"series {self.id!r}: time must be (steps={values.shape[0]},), got {tuple(time.shape)}")
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "time", time)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        return f"Series(id={self.id!r}, steps={len(self)}, columns={self.columns})"

    def slice(self, start: int, stop: int) -> Series:
        """Rows ``[start, stop)``, with their timestamps."""
        time = None if self.time is None else self.time[start:stop]
        return Series(self.id, self.values[start:stop], self.columns, time)

    def select(self, indices: Sequence[int]) -> Series:
        """The columns at ``indices``, in that order."""
        idx = list(indices)
        return Series(self.id, self.values[:, idx], tuple(self.columns[i] for i in idx), self.time)


@dataclass(frozen=True)
class Split:
    """A chronological train/val/test split, applied to each series by row numbers.

    Either ``fractions`` of each series (train, val, test; default ``(0.7, 0.1, 0.2)``) or
    explicit ``borders``: three ``(start, stop)`` row ranges. With fractions that sum to 1, the
    train and test sizes are rounded down and val takes the rest, as Time-Series-Library does.
    ``lookback`` starts val and test that many rows early (fractions only; borders say it
    themselves), so that the first window's target is the segment's first row.

    >>> Split(fractions=(0.7, 0.1, 0.2)).ranges(100)
    ((0, 70), (70, 80), (80, 100))
    >>> Split(fractions=(0.7, 0.1, 0.2), lookback=5).ranges(100)
    ((0, 70), (65, 80), (75, 100))
    >>> Split.ett("ETTm1", seq_len=96).borders
    ((0, 34560), (34464, 46080), (45984, 57600))
    """

    fractions: tuple[float, float, float] | None = None
    borders: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    lookback: int = 0

    def __post_init__(self) -> None:
        if self.fractions is not None and self.borders is not None:
            raise ConfigError("a Split takes fractions or borders, not both")
        if isinstance(self.lookback, bool) or not isinstance(self.lookback, int) or self.lookback < 0:
            raise ConfigError(f"Split lookback must be an int >= 0, got {self.lookback!r}")
        if self.borders is not None:
            self._check_borders()
            return
        fractions = (0.7, 0.1, 0.2) if self.fractions is None else tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
            raise ConfigError(
                f"Split fractions must be three numbers >= 0 (train, val, test) summing to at most 1, "
                f"got {self.fractions!r}"
            )
        object.__setattr__(self, "fractions", fractions)

    def _check_borders(self) -> None:
        try:  # operator.index: ints (Python or numpy) only, not 12.5
            borders = tuple((operator.index(a), operator.index(b)) for a, b in self.borders)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            borders = ()
        if len(borders) != 3:
            raise ConfigError(
                f"Split borders must be three (start, stop) row pairs (train, val, test), got {self.borders!r}"
            )
        for name, (start, stop) in zip(SEGMENTS, borders, strict=True):
            if start < 0 or stop < start:
                raise ConfigError(f"Split borders: {name} rows [{start}, {stop}) must have 0 <= start <= stop")
        if self.lookback:
            raise ConfigError("Split lookback applies to fractions; with borders, start val and test early yourself")
        object.__setattr__(self, "borders", borders)

    @classmethod
    def ett(cls, name: str, seq_len: int) -> Split:
        """ETT's standard borders (12/4/4 months of 30 days; val and test start ``seq_len`` early).

        ``name`` is ``ETTh1``, ``ETTh2`` (hourly) or ``ETTm1``, ``ETTm2`` (15 minutes); a file name
        such as ``"ETTm1.csv"`` works too.
        """
        stem = Path(str(name)).name.split(".")[0]
        if stem not in ("ETTh1", "ETTh2", "ETTm1", "ETTm2"):
            raise ConfigError(f"Split.ett: unknown ETT dataset {name!r}; expected ETTh1, ETTh2, ETTm1 or ETTm2")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
            raise ConfigError(f"Split.ett: seq_len must be an int >= 0, got {seq_len!r}")
        month = 30 * 24 * (4 if stem.startswith("ETTm") else 1)
        train, val, test = 12 * month, 16 * month, 20 * month
        return cls(borders=((0, train), (train - seq_len, val), (val - seq_len, test)))

    def ranges(self, n_rows: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The ``(start, stop)`` rows of train, val and test for a series of ``n_rows`` rows."""
        if self.borders is not None:
            return self.borders
        f_train, f_val, f_test = self.fractions  # type: ignore[misc]
        if abs(f_train + f_val + f_test - 1) < 1e-9:
            e1, e3 = int(n_rows * f_train), n_rows
            e2 = e3 - int(n_rows * f_test)
        else:
            e1, e2, e3 = (int(n_rows * f) for f in (f_train, f_train + f_val, f_train + f_val + f_test))
        look = self.lookback
        return (0, e1), (max(0, e1 - look), e2), (max(0, e2 - look), e3)

    def to_json(self) -> dict[str, Any]:
        if self.borders is not None:
            return {"borders": [list(b) for b in self.borders]}
        return {"fractions": list(self.fractions or ()), "lookback": self.lookback}

    @classmethod
    def from_json(cls, data: Any) -> Split:
        if not isinstance(data, dict) or not ({"fractions", "borders"} & set(data)):
            raise ConfigError(f"a Split in JSON is {{'fractions': [...]}} or {{'borders': [...]}}, got {data!r}")
        if "borders" in data:
            return cls(borders=tuple(tuple(b) for b in data["borders"]))  # type: ignore[arg-type]
        return cls(fractions=tuple(data["fractions"]), lookback=int(data.get("lookback", 0)))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Dataset:
    """One or more :class:`Series` sharing the same columns, and where they came from.

    >>> ds = Dataset((Series("a", np.arange(20.0).reshape(10, 2), ("x", "y")),), ("x", "y"), "demo")
    >>> ds.select(["y"]).array()[:3, 0].tolist()
    [1.0, 3.0, 5.0]
    >>> [d.lengths for d in ds.split(Split(fractions=(0.6, 0.2, 0.2)))]
    [(6,), (2,), (2,)]
    """

    series: tuple[Series, ...]
    columns: tuple[str, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        series = (self.series,) if isinstance(self.series, Series) else tuple(self.series)
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(str(c) for c in self.columns)
        for s in series:
            if s.columns != columns:
                raise DataError(f"{self.source}: series {s.id!r} has columns {s.columns}, the dataset has {columns}")
        object.__setattr__(self, "series", series)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "source", str(self.source))

    def __repr__(self) -> str:
        return f"Dataset(source={self.source!r}, series={self.num_series}, columns={self.columns})"

    @property
    def num_series(self) -> int:
        return len(self.series)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.series)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Rows per series."""
        return tuple(len(s) for s in self.series)

    def column_indices(self, columns: Sequence[str] | str) -> tuple[int, ...]:
        """Positions of ``columns`` in :attr:`columns`; a DataError names any that is missing."""
        names = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in names if c not in self.columns]
        if missing:
            raise DataError(
                f"{self.source}: column {missing[0]!r} not found; the dataset has columns {', '.join(self.columns)}"
            )
        return tuple(self.columns.index(c) for c in names)

    def select(self, columns: Sequence[str] | str) -> Dataset:
        """The same series with only ``columns``, in that order."""
        idx = self.column_indices(columns)
        return Dataset(tuple(s.select(idx) for s in self.series), tuple(self.columns[i] for i in idx), self.source)

    def split(self, split: Split) -> tuple[Dataset, Dataset, Dataset]:
        """``(train, val, test)``: each series cut by ``split`` at its own row numbers."""
        parts: list[list[Series]] = [[], [], []]
        for s in self.series:
            for part, name, (start, stop) in zip(parts, SEGMENTS, split.ranges(len(s)), strict=True):
                if stop > len(s):
                    raise DataError(
                        f"{self.source}: series {s.id!r} has {len(s)} rows, but the {name} split ends at row {stop}"
                    )
                part.append(s.slice(start, stop))
        train, val, test = (Dataset(tuple(p), self.columns, self.source) for p in parts)
        return train, val, test

    def arrays(self, columns: Sequence[str] | str | None = None) -> list[np.ndarray]:
        """One ``(steps, n_columns)`` array per series, of all or the given columns."""
        if columns is None:
            return [s.values for s in self.series]
        idx = list(self.column_indices(columns))
        return [s.values[:, idx] for s in self.series]

    def array(self) -> np.ndarray:
        """The values ``(steps, n_columns)`` of a single-series dataset."""
        if self.num_series != 1:
            raise DataError(
                f"{self.source}: array() needs exactly one series, this dataset has {self.num_series}; "
                f"use .arrays() or .series[i].values"
            )
        return self.series[0].values


def read_dataset(
    path: str | Path,
    *,
    time_col: str | None = None,
    id_col: str = "unique_id",
    ds_col: str = "ds",
    layout: str = "auto",
    columns: Sequence[str] | None = None,
    fill: str = "error",
) -> Dataset:
    """Read a CSV or Parquet file into a :class:`Dataset`.

    Args:
        path: a ``.csv`` or ``.tsv`` (optionally compressed, e.g. ``.csv.gz``) or ``.parquet`` file.
        time_col: the time column of a wide file (None: the file has none). In a long file it
            overrides ``ds_col``.
        id_col, ds_col: the series id and time columns of a long file.
        layout: ``"wide"``, ``"long"`` or ``"auto"`` (long when the file has ``id_col`` and its time
            column, else wide).
        columns: the value columns to keep, in this order (default: every column except the id
            and time columns).
        fill: ``"error"`` (a missing value is an error) or ``"ffill"`` (carry the last value
            forward within the series; a series that starts with a missing value is still an error).

    A wide file is one series whose id is the file's stem; a long file gives one series per id,
    in order of first appearance, each keeping its rows' file order.
    """
    pd = require("pandas", "data")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if fill not in FILLS:
        raise ConfigError(f"unknown fill {fill!r}; expected one of {', '.join(FILLS)}")
    path = Path(path)
    name = str(path)
    frame = _read_frame(path)
    header = [str(c) for c in frame.columns]
    frame.columns = header
    if layout == "auto":
        layout = "long" if id_col in header and (time_col or ds_col) in header else "wide"
    tcol = (time_col or ds_col) if layout == "long" else time_col
    keys = ([id_col] if layout == "long" else []) + ([tcol] if tcol else [])
    _require_columns(name, header, keys)
    if columns is None:
        value_cols = [c for c in header if c not in keys]
    else:
        value_cols = [columns] if isinstance(columns, str) else [str(c) for c in columns]
        _require_columns(name, header, value_cols)
        if len(set(value_cols)) != len(value_cols):
            raise ConfigError(f"{name}: a column is chosen twice in columns={value_cols}")
    if not value_cols:
        raise DataError(f"{name}: no value columns besides {', '.join(keys)}")
    if len(frame) == 0:
        raise DataError(f"{name}: no data rows")

    hint = layout == "wide" and time_col is None
    values = np.column_stack([_numeric(name, frame[c], c, hint) for c in value_cols])  # (rows, n_columns)
    time = None if tcol is None else _timestamps(name, frame[tcol], tcol)
    if layout == "long":
        ids = frame[id_col].astype(str).to_numpy()
        missing = frame[id_col].isna().to_numpy()
        if missing.any():
            raise DataError(f"{name}: column {id_col!r}, data row {int(np.argmax(missing)) + 1}: missing series id")
        codes, uniques = pd.factorize(ids)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
        groups = [(str(u), rows) for u, rows in zip(uniques, np.split(order, bounds), strict=True)]
    else:
        groups = [(path.name.split(".")[0], np.arange(len(frame)))]

    series = []
    for sid, rows in groups:
        where = f" (series {sid!r})" if layout == "long" else ""
        if time is not None and tcol is not None:
            _check_order(name, tcol, time[rows], rows, where)
        v = _fill(name, value_cols, values[rows], rows, where, fill)
        series.append(Series(sid, v, tuple(value_cols), None if time is None else time[rows]))
    return Dataset(tuple(series), tuple(value_cols), name)


def _read_frame(path: Path) -> pd.DataFrame:
    pd = require("pandas", "data")
    name = str(path)
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path, engine="pyarrow")
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise DataError(f"{name}: cannot read as Parquet: {_first_line(e)}") from None
        if not isinstance(frame.index, pd.RangeIndex):  # a time index written by to_parquet
            frame = frame.reset_index()
        return frame
    if ".csv" in suffixes or ".tsv" in suffixes:
        try:
            # low_memory=False: one dtype per column (no DtypeWarning on mixed chunks)
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",", low_memory=False)
        except pd.errors.EmptyDataError:
            raise DataError(f"{name}: the file is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
            raise DataError(f"{name}: cannot read as CSV: {_first_line(e)}") from None
    raise DataError(f"{name}: unsupported file type {''.join(path.suffixes)!r}; expected .csv or .parquet")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _require_columns(name: str, header: list[str], wanted: Sequence[str]) -> None:
    for c in wanted:
        if c not in header:
            raise DataError(f"{name}: column {c!r} not found in the header; the file has columns {', '.join(header)}")


def _numeric(name: str, col: pd.Series, column: str, hint: bool) -> np.ndarray:
    """The column as float64 (NaN where missing), or a DataError at its first non-numeric value."""
    pd = require("pandas", "data")
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_datetime64_any_dtype(col.dtype):
        number = pd.Series(np.nan, index=col.index)
    else:
        number = pd.to_numeric(col, errors="coerce")
    bad = (number.isna() & col.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        value = str(col.iloc[row])
        looks_like_time = hint and pd.notna(pd.to_datetime(value, format="ISO8601", errors="coerce"))
        tip = f"; if it is the time column, pass time_col={column!r} (--time-col {column})" if looks_like_time else ""
        raise DataError(f"{name}: column {column!r}, data row {row + 1}: non-numeric value {value!r}{tip}")
    return number.to_numpy(dtype=np.float64, na_value=np.nan)


def _timestamps(name: str, col: pd.Series, column: str) -> np.ndarray:
    """``datetime64[ns]`` (UTC, naive) or numbers; a DataError at the first missing or unreadable one."""
    pd = require("pandas", "data")
    missing = col.isna().to_numpy()
    if missing.any():
        raise DataError(f"{name}: column {column!r}, data row {int(np.argmax(missing)) + 1}: missing timestamp")
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy()
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = pd.to_datetime(col, utc=True)
    else:
        text = col.astype(str)
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        if parsed.isna().any():
            parsed = pd.to_datetime(text, format="mixed", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{name}: column {column!r}, data row {row + 1}: cannot parse timestamp {text.iloc[row]!r}")
    return parsed.dt.tz_convert(None).to_numpy().astype("datetime64[ns]")


def _fmt_time(t: Any) -> str:
    pd = require("pandas", "data")
    return str(pd.Timestamp(t)) if isinstance(t, np.datetime64) else f"{t}"


def _check_order(name: str, column: str, time: np.ndarray, rows: np.ndarray, where: str) -> None:
    """Timestamps must increase strictly; name the first row that does not."""
    bad = np.flatnonzero(time[1:] <= time[:-1])
    if not len(bad):
        return
    j = int(bad[0])
    row, prev = int(rows[j + 1]) + 1, int(rows[j]) + 1
    now, before = _fmt_time(time[j + 1]), _fmt_time(time[j])
    at = f"{name}: column {column!r}, data row {row}{where}"
    if time[j + 1] == time[j]:
        raise DataError(f"{at}: duplicated timestamp {now} (also at data row {prev})")
    raise DataError(f"{at}: timestamp {now} is earlier than {before} at data row {prev}; rows must be sorted by time")


def _fill(name: str, columns: list[str], v: np.ndarray, rows: np.ndarray, where: str, fill: str) -> np.ndarray:
    """Refuse missing and infinite values, or forward-fill the missing ones within one series."""
    pd = require("pandas", "data")
    inf = np.argwhere(np.isinf(v))  # row-major: the earliest row first
    if len(inf):
        r, c = inf[0]
        raise DataError(f"{name}: column {columns[c]!r}, data row {int(rows[r]) + 1}{where}: infinite value {v[r, c]}")
    nan = np.isnan(v)
    if not nan.any():
        return v
    if fill == "ffill":
        v = pd.DataFrame(v).ffill().to_numpy()
        nan = np.isnan(v)
        if not nan.any():
            return v
        how = "missing value (NaN) with no earlier value to forward-fill"
    else:
        how = "missing value (NaN); pass fill='ffill' (--ffill on the command line) to forward-fill"
    r, c = np.argwhere(nan)[0]
    raise DataError(f"{name}: column {columns[c]!r}, data row {int(rows[r]) + 1}{where}: {how}")

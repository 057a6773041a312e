"""Long-format frames (``unique_id``, ``ds``, ``y``, exogenous columns) read into per-series arrays.

Every check fails in one line that names the frame, the series and the column: a missing column,
unsorted or duplicated timestamps, a gap in ``freq``, a missing value. pandas is the ``[data]``
extra and is imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, DataError

__all__ = ["SeriesRows", "fmt_stamp", "future_stamps", "read_long", "step_of"]


def _pd() -> Any:
    return require("pandas", "data")


@dataclass(frozen=True)
class SeriesRows:
    """One series of a long frame: its timestamps ``(n,)`` and ``values`` ``(n, len(columns))``."""

    uid: Any
    ds: np.ndarray
    values: np.ndarray


def step_of(freq: Any) -> Any:
    """The step of ``freq``: a pandas offset for a string (``"h"``, ``"15min"``), the int for integer stamps."""
    if isinstance(freq, bool):
        raise ConfigError(f"freq: expected a pandas frequency string or a positive int, got {freq!r}")
    if isinstance(freq, int | np.integer):
        if freq < 1:
            raise ConfigError(f"freq: expected a positive int step, got {freq}")
        return int(freq)
    try:
        return _pd().tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise ConfigError(f"freq: {freq!r} is not a pandas frequency (e.g. 'h', '15min', 'D') or an int") from None


def future_stamps(last: Any, freq: Any, h: int) -> np.ndarray:
    """The ``h`` timestamps after ``last`` at ``freq``."""
    step = step_of(freq)
    if isinstance(step, int):
        return np.asarray(last) + step * np.arange(1, h + 1)
    pd = _pd()
    return np.asarray(pd.date_range(pd.Timestamp(last), periods=h + 1, freq=step)[1:].to_numpy())


def _expected(first: Any, n: int, freq: Any) -> np.ndarray:
    step = step_of(freq)
    if isinstance(step, int):
        return np.asarray(first) + step * np.arange(n)
    pd = _pd()
    return np.asarray(pd.date_range(pd.Timestamp(first), periods=n, freq=step).to_numpy())


def fmt_stamp(v: Any) -> str:
    """A timestamp as people write it: ``2024-01-07 16:00:00``, or the int."""
    return str(_pd().Timestamp(v)) if isinstance(v, np.datetime64) else str(v)


def read_long(
    df: Any,
    what: str,
    *,
    id_col: str,
    time_col: str,
    columns: Sequence[str],
    freq: Any,
    min_rows: int = 1,
) -> dict[Any, SeriesRows]:
    """Split ``df`` into series (in order of first appearance), checking ``columns`` and the stamps."""
    pd = _pd()
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    for col in (id_col, time_col, *columns):
        if col not in df.columns:
            raise DataError(f"{what}: missing column {col!r}")
    step = step_of(freq)
    stamps = df[time_col]
    if isinstance(step, int) and not pd.api.types.is_integer_dtype(stamps):
        raise DataError(f"{what}: column {time_col!r} must hold integers for the int freq {freq}")
    if not isinstance(step, int):
        try:
            stamps = pd.to_datetime(stamps)
        except (ValueError, TypeError):
            raise DataError(f"{what}: column {time_col!r} does not hold timestamps") from None
    values = df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan) if columns else np.zeros((len(df), 0))
    ds_all = stamps.to_numpy()
    out: dict[Any, SeriesRows] = {}
    for uid, idx in df.groupby(id_col, sort=False).indices.items():
        ds, vals = ds_all[idx], values[idx]
        if len(ds) < min_rows:
            raise DataError(f"{what}: series {uid!r} has {len(ds)} rows; it needs at least {min_rows}")
        back = np.nonzero(ds[1:] < ds[:-1])[0]
        if back.size:
            k = back[0] + 1
            raise DataError(
                f"{what}: series {uid!r}: timestamps not sorted ({fmt_stamp(ds[k])} after {fmt_stamp(ds[k - 1])})"
            )
        dup = np.nonzero(ds[1:] == ds[:-1])[0]
        if dup.size:
            raise DataError(f"{what}: series {uid!r}: duplicated timestamp {fmt_stamp(ds[dup[0]])}")
        want = _expected(ds[0], len(ds), freq)
        off = np.nonzero(ds != want)[0]
        if off.size:
            k = off[0]
            raise DataError(
                f"{what}: series {uid!r}: gap in freq {freq!r} after {fmt_stamp(ds[k - 1])}: "
                f"next is {fmt_stamp(ds[k])}, expected {fmt_stamp(want[k])}"
            )
        bad = np.argwhere(~np.isfinite(vals))
        if bad.size:
            r, c = bad[0]
            raise DataError(f"{what}: series {uid!r}: column {columns[c]!r} is missing at {fmt_stamp(ds[r])}")
        out[uid] = SeriesRows(uid, ds, vals)
    return out

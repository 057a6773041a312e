"""Long-format frames (``unique_id``, ``ds``, ``y``, exogenous columns) read into per-series arrays,
and forecasts written back as long frames (:func:`forecast_frame`, :func:`samples_frame`).

Every check fails in one line that names the frame, the series and the column: a missing column,
unsorted or duplicated timestamps, a gap in ``freq``, a missing value. pandas is the ``[data]``
extra and is imported on first use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, DataError

__all__ = [
    "SeriesRows",
    "check_finite",
    "fmt_stamp",
    "forecast_frame",
    "future_stamps",
    "quantile_columns",
    "read_long",
    "samples_frame",
    "step_of",
]


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
    if isinstance(freq, bool) or freq is None:
        raise ConfigError(f"freq: expected a pandas frequency string or a positive int, got {freq!r}")
    if isinstance(freq, int | np.integer):
        if freq < 1:
            raise ConfigError(f"freq: expected a positive int step, got {freq}")
        return int(freq)
    if isinstance(freq, str):
        return _offset(freq)  # parsed once per string: every read and forecast asks
    return _offset.__wrapped__(freq)


@functools.lru_cache(maxsize=64)
def _offset(freq: Any) -> Any:
    try:
        return _pd().tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError) as e:
        hint = re.search(r"Please use '([^']+)' instead|Did you mean ([^?'\s]+)\?", str(e))
        then = f"; pandas says to use {next(g for g in hint.groups() if g)!r}" if hint else ""
        raise ConfigError(
            f"freq: {freq!r} is not a pandas frequency (e.g. 'h', '15min', 'D') or an int{then}"
        ) from None


def future_stamps(last: Any, freq: Any, h: int) -> np.ndarray:
    """The ``h`` timestamps after ``last`` at ``freq``."""
    return _expected(last, h + 1, freq)[1:]


def _expected(first: Any, n: int, freq: Any) -> np.ndarray:
    step = step_of(freq)
    if isinstance(step, int):
        return np.asarray(first) + step * np.arange(n)
    pd = _pd()
    start = np.asarray(first)
    if isinstance(step, pd.offsets.Tick) and start.dtype.kind == "M":  # a fixed duration, naive stamps
        delta = np.timedelta64(step.nanos, "ns")
        unit = np.datetime_data(start.dtype)[0]
        own = delta.astype(f"m8[{unit}]")
        if own.astype("m8[ns]") == delta:  # in the stamps' own unit: ns overflow past 2262
            delta = own
        return start + np.arange(n) * delta
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
    history: bool = True,
) -> dict[Any, SeriesRows]:
    """Split ``df`` into series (in order of first appearance), checking ``columns`` and the stamps.

    ``history=False`` reads a frame whose rows are looked up by stamp (``futr_df``): each series'
    rows are sorted by stamp and may have gaps and missing values; the caller checks the rows it
    reads with :func:`check_finite`."""
    pd = _pd()
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    for col in (id_col, time_col, *columns):
        if col not in df.columns:
            raise DataError(f"{what}: missing column {col!r}")
    no_id = df[id_col].isna().to_numpy()
    if no_id.any():  # groupby would drop these rows without a word
        n, first = int(no_id.sum()), int(no_id.argmax())
        raise DataError(f"{what}: column {id_col!r} is missing in {n} of {len(df)} rows (the first: row {first})")
    step = step_of(freq)
    stamps = df[time_col]
    if isinstance(step, int) and not pd.api.types.is_integer_dtype(stamps):
        raise DataError(f"{what}: column {time_col!r} must hold integers for the int freq {freq}")
    if not isinstance(step, int) and pd.api.types.is_numeric_dtype(stamps):  # to_datetime would read nanoseconds
        raise DataError(f"{what}: column {time_col!r} holds numbers, not timestamps; integer stamps take an int freq")
    if not isinstance(step, int) and not pd.api.types.is_datetime64_any_dtype(stamps):  # else: stamps already
        try:
            stamps = pd.to_datetime(stamps)
        except (ValueError, TypeError):
            _mixed_offsets(stamps, what, time_col)
            raise DataError(f"{what}: column {time_col!r} does not hold timestamps") from None
    values = _numbers(df, what, columns, id_col, time_col)
    ds_all = stamps.to_numpy()
    out: dict[Any, SeriesRows] = {}
    for uid, idx in df.groupby(id_col, sort=False).indices.items():
        ds, vals = ds_all[idx], values[idx]
        if len(ds) < min_rows:
            raise DataError(f"{what}: series {uid!r} has {len(ds)} rows; it needs at least {min_rows}")
        nat = np.nonzero(pd.isna(ds))[0]
        if nat.size:
            where = f"after {fmt_stamp(ds[nat[0] - 1])}" if nat[0] else "in its first row"
            raise DataError(f"{what}: series {uid!r}: column {time_col!r} is missing {where}")
        if not history:
            order = np.argsort(ds, kind="stable")
            ds, vals = ds[order], vals[order]
        back = np.nonzero(ds[1:] < ds[:-1])[0]
        if back.size:
            k = back[0] + 1
            raise DataError(
                f"{what}: series {uid!r}: timestamps not sorted ({fmt_stamp(ds[k])} after {fmt_stamp(ds[k - 1])})"
            )
        dup = np.nonzero(ds[1:] == ds[:-1])[0]
        if dup.size:
            raise DataError(f"{what}: series {uid!r}: duplicated timestamp {fmt_stamp(ds[dup[0]])}")
        if not history:
            out[uid] = SeriesRows(uid, ds, vals)
            continue
        want = _expected(ds[0], len(ds), freq)
        off = np.nonzero(ds != want)[0]
        if off.size:
            k = off[0]
            if k == 0:  # date_range moved the first stamp: it is not on freq's anchor (a Monday for "W")
                raise DataError(
                    f"{what}: series {uid!r}: first timestamp {fmt_stamp(ds[0])} is not on freq {freq!r} "
                    f"(its next stamp on that freq is {fmt_stamp(want[0])})"
                )
            raise DataError(
                f"{what}: series {uid!r}: gap in freq {freq!r} after {fmt_stamp(ds[k - 1])}: "
                f"next is {fmt_stamp(ds[k])}, expected {fmt_stamp(want[k])}"
            )
        check_finite(what, SeriesRows(uid, ds, vals), columns)
        out[uid] = SeriesRows(uid, ds, vals)
    return out


def check_finite(what: str, rows: SeriesRows, columns: Sequence[str]) -> None:
    """Fail on the first missing or infinite value of ``rows``, naming its series, column and stamp."""
    bad = np.argwhere(~np.isfinite(rows.values))
    if bad.size:
        r, c = bad[0]
        v = rows.values[r, c]
        kind = "missing" if np.isnan(v) else f"not finite ({v})"
        raise DataError(f"{what}: series {rows.uid!r}: column {columns[c]!r} is {kind} at {fmt_stamp(rows.ds[r])}")


def _mixed_offsets(stamps: Any, what: str, time_col: str) -> None:
    """Fail by name when ``stamps`` are timestamps whose UTC offsets differ (local times written
    across a daylight-saving change), which pandas reads only as UTC."""
    try:
        _pd().to_datetime(stamps, utc=True)
    except (ValueError, TypeError):
        return
    raise DataError(
        f"{what}: column {time_col!r} holds stamps with different UTC offsets; give them one time zone: "
        f"pd.to_datetime(df[{time_col!r}], utc=True).dt.tz_convert(<its IANA zone>)"
    )


def _numbers(df: Any, what: str, columns: Sequence[str], id_col: str, time_col: str) -> np.ndarray:
    """``df[columns]`` as float64 ``(rows, len(columns))``, missing values as NaN; a column that
    does not hold numbers fails by name, with the series, stamp and value of its first bad row."""
    if not columns:
        return np.zeros((len(df), 0))
    pd = _pd()
    out = np.empty((len(df), len(columns)))
    for k, col in enumerate(columns):
        try:
            out[:, k] = df[col].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            bad = np.nonzero((pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()).to_numpy())[0]
            if not bad.size:
                raise DataError(f"{what}: column {col!r} does not hold numbers") from None
            row = df.iloc[bad[0]]
            raise DataError(
                f"{what}: series {row[id_col]!r}: column {col!r} does not hold numbers "
                f"({row[col]!r} at {row[time_col]})"
            ) from None
    return out


# -- forecasts as long frames ----------------------------------------------------------------------

LEVELS = (80, 90)


def _ids_at(ids: Sequence[Any], codes: np.ndarray) -> Any:
    """The column of series ids ``ids[codes]``: one pandas Index taken at the codes, so strings
    and ints keep the kind pandas gives them without converting every row's value."""
    return _pd().Index(list(ids)).take(codes)


def _whole(v: Any) -> bool:
    """Whether ``v`` is a whole number (80, 80.0, np.int64(80); not True, 80.5 or "80")."""
    return not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating) and float(v).is_integer()


def forecast_frame(
    paths: np.ndarray,
    ids: Sequence[Any],
    stamps: dict[Any, np.ndarray],
    names: tuple[str, str, str],
    level: Sequence[int] | None = None,
    quantiles: Sequence[float] | None = None,
) -> Any:
    """``[id, time, <alias>, <alias>-median, <alias>-lo-90, <alias>-lo-80, <alias>-hi-80,
    <alias>-hi-90]`` from ``paths`` ``(num_samples, series, h)`` (NeuralForecast's names; ``level``
    changes the intervals, ``quantiles`` gives ``<alias>-ql<q>`` columns instead). ``names``: the
    id, time and alias column names."""
    id_col, time_col, name = names
    cols: dict[str, np.ndarray] = {name: paths.mean(axis=0)}
    labels, qs = quantile_columns(name, level, quantiles)
    cols.update(zip(labels, np.quantile(paths, qs, axis=0), strict=True))  # one sort for every quantile
    h = paths.shape[2]
    out = {id_col: _ids_at(ids, np.repeat(np.arange(len(ids)), h)), time_col: np.concatenate([stamps[u] for u in ids])}
    out.update({k: v.reshape(-1) for k, v in cols.items()})
    return _pd().DataFrame(out)


def quantile_columns(
    name: str, level: Sequence[int] | None = None, quantiles: Sequence[float] | None = None
) -> tuple[list[str], list[float]]:
    """The quantile columns of :func:`forecast_frame` beside ``<name>`` and their quantiles;
    a bad ``level`` or ``quantiles`` fails here, before anything is drawn."""
    if quantiles is not None and level is not None:
        raise ConfigError("give level or quantiles, not both: quantiles replace the level columns")
    if quantiles is not None:
        try:
            qs = [float(q) for q in quantiles]
        except (TypeError, ValueError):
            qs = [float("nan")]  # not numbers: refused below, as numbers outside (0, 1) are
        if not all(0 < q < 1 for q in qs):
            raise ConfigError(f"quantiles must be numbers in (0, 1), got {list(quantiles)}")
        labels = [f"{name}-ql{q:g}" for q in qs]
    else:
        given = list(LEVELS if level is None else level)
        if not all(_whole(v) and 0 < v < 100 for v in given):
            raise ConfigError(f"level must hold whole numbers in (0, 100), got {given}")
        levels = sorted(int(v) for v in given)
        labels = [f"{name}-median", *(f"{name}-lo-{v}" for v in reversed(levels))]
        labels += [f"{name}-hi-{v}" for v in levels]
        qs = [0.5, *((1 - v / 100) / 2 for v in reversed(levels)), *(1 - (1 - v / 100) / 2 for v in levels)]
    return labels, qs


def samples_frame(
    paths: np.ndarray, ids: Sequence[Any], stamps: dict[Any, np.ndarray], names: tuple[str, str, str]
) -> Any:
    """``[id, time, sample_id, <alias>]``: every path of ``paths`` ``(num_samples, series, h)``."""
    id_col, time_col, name = names
    s, b, h = paths.shape
    return _pd().DataFrame(
        {
            id_col: _ids_at(ids, np.tile(np.repeat(np.arange(b), h), s)),
            time_col: np.tile(np.concatenate([stamps[u] for u in ids]), s),
            "sample_id": np.repeat(np.arange(s), b * h),
            name: paths.reshape(-1),
        }
    )

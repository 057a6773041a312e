"""A :class:`~hiddenstate.forecaster.Forecaster` in a run directory: its model, its settings and
every series' state, scale, last row and lag tail.

    manifest.json            the run's manifest; "extra" -> "forecaster": settings, spread and
                             per series: id, scale, last y / hist / stat / ds, tail (JSON)
    model.safetensors        the weights
    lane_state.safetensors   every series' state, one row each, in the order of "series"

Written by :func:`hiddenstate.runs.run.save_run` (atomic, fsynced, every file's sha256 in the
manifest) and read back by ``load_run``, which verifies them; nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.data.longframe import step_of
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.errors import ConfigError
from hiddenstate.paths import check_spread
from hiddenstate.state import State
from hiddenstate.train.config import TrainConfig

__all__ = ["FORMAT", "load_forecaster", "save_forecaster"]

FORMAT = "hiddenstate.forecaster/1"


def save_forecaster(fc: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fc`` (a fitted Forecaster) into the run directory ``path``."""
    from hiddenstate.runs.run import save_run

    fc._fitted()
    ids = fc._ids
    for u in ids:
        if isinstance(u, bool) or not isinstance(u, str | int | float | np.integer | np.floating):
            raise ConfigError(f"save: series id {u!r} cannot be saved; ids must be str, int or float")
    int_ds = isinstance(step_of(fc.freq), int)
    tz = None if int_ds else _zone(fc._series[ids[0]]["ds"])
    unit = None if int_ds else require("pandas", "data").Timestamp(fc._series[ids[0]]["ds"]).unit
    stamp = (lambda v: int(v)) if int_ds else (lambda v: require("pandas", "data").Timestamp(v).isoformat())
    meta = {
        "format": FORMAT,
        "horizon": fc.horizon,
        "freq": fc.freq,
        "tz": tz,
        "ds_unit": unit,  # the stamps' resolution (s, ms, us, ns), which the forecast frames keep
        "likelihood": fc.likelihood,
        "columns": {"id": fc.id_col, "time": fc.time_col, "target": fc.target_col},
        "futr_exog": fc.futr_exog,
        "hist_exog": fc.hist_exog,
        "stat_exog": fc.stat_exog,
        "lags": fc.lags,
        "steps": fc.steps,
        "batch_size": fc.batch_size,
        "num_samples": fc.num_samples,
        "alias": fc.alias,
        "spread": fc.spread_,
        "exog_scaler": None if fc.features.exog is None else fc.features.exog.to_json(),
        "series": [
            {
                "id": u.item() if isinstance(u, np.generic) else u,
                "scale": fc._series[u]["scale"],
                "y": fc._series[u]["y"],
                "hist": [float(v) for v in fc._series[u]["hist"]],
                "stat": [float(v) for v in fc._series[u]["stat"]],
                "ds": stamp(fc._series[u]["ds"]),
                "tail": [float(v) for v in fc._series[u]["tail"]],
            }
            for u in ids
        ],
    }
    save_run(
        path,
        fc.model,
        scaler=None,
        inputs=fc.input_columns,
        targets=[fc.target_col],
        train_config=fc.config,
        lane_state=State.cat([fc._series[u]["state"] for u in ids]),
        extra={"forecaster": meta},
    )
    return Path(path)


def _zone(stamp: Any) -> str | None:
    """The IANA name of ``stamp``'s time zone (None: naive), checked to parse back."""
    pd = require("pandas", "data")
    ts = pd.Timestamp(stamp)
    if ts.tz is None:
        return None
    name = str(ts.tz)
    try:
        ok = pd.Timestamp(ts.isoformat()).tz_convert(name) == ts
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(f"save: ds's time zone {name!r} has no name to save; use an IANA zone or UTC")
    return name


_KEYS = ("horizon", "freq", "likelihood", "columns", "futr_exog", "hist_exog", "stat_exog", "steps", "batch_size")
_KEYS += ("num_samples", "alias", "exog_scaler", "series")
_SERIES_KEYS = ("id", "scale", "y", "hist", "stat", "ds")


def _series_entry(where: str, s: Any, fc: Any) -> dict[str, Any]:
    """One stored series' entry, checked: every key, finite numbers, lengths the columns declare."""
    if not isinstance(s, dict) or any(k not in s for k in _SERIES_KEYS):
        raise ConfigError(f"{where}: expected an object with {', '.join(_SERIES_KEYS)}")
    uid = s["id"]
    if isinstance(uid, bool) or not isinstance(uid, str | int | float):
        raise ConfigError(f"{where}: id {uid!r} is not a str, int or float")
    try:
        scale, y = float(s["scale"]), float(s["y"])
        hist, stat = (np.asarray(s[k], dtype=np.float64).reshape(-1) for k in ("hist", "stat"))
        tail = np.asarray(s.get("tail", []), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: series {uid!r}: scale, y, hist, stat and tail must be numbers") from None
    if not (np.isfinite(scale) and scale > 0):
        raise ConfigError(f"{where}: series {uid!r}: scale must be finite and > 0, got {scale}")
    if not (np.isfinite(y) and np.isfinite(hist).all() and np.isfinite(stat).all() and np.isfinite(tail).all()):
        raise ConfigError(f"{where}: series {uid!r}: a stored value is not finite")
    for name, have, want in (("hist", hist, fc.hist_exog), ("stat", stat, fc.stat_exog)):
        if len(have) != len(want):
            raise ConfigError(f"{where}: series {uid!r}: {len(have)} {name} values for the columns {want}")
    if len(tail) != (max(fc.lags) if fc.lags else 0):
        raise ConfigError(f"{where}: series {uid!r}: its stored tail does not match the lags {fc.lags}")
    return {"id": uid, "scale": scale, "y": y, "hist": hist, "stat": stat, "tail": tail}


def _stamp(where: str, uid: Any, value: Any, int_ds: bool, tz: str | None, unit: str | None) -> Any:
    """A stored last stamp as the forecaster holds it: an int, naive datetime64, or tz-aware
    Timestamp, in the resolution ``unit`` that ``ds`` had (None, from an older run: as parsed)."""
    pd = require("pandas", "data")
    try:
        if int_ds:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return np.int64(value)
        ts = pd.Timestamp(value)
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{where}: series {uid!r}: ds {value!r} is not a stored stamp") from None
    if unit is not None:
        try:
            ts = ts.as_unit(unit, round_ok=False)
        except ValueError:  # finer than the unit, or out of its range
            raise ConfigError(f"{where}: series {uid!r}: ds {value!r} does not fit ds_unit {unit!r}") from None
    return ts.to_datetime64() if tz is None else ts.tz_convert(tz)


def load_forecaster(cls: Any, path: str | os.PathLike[str]) -> Any:
    """The Forecaster (of class ``cls``) saved in ``path``, every series' state as it was."""
    from hiddenstate.runs.run import load_run

    run = load_run(path)
    meta = run.extra.get("forecaster")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or run.lane_state is None:
        raise ConfigError(f"{path}: not a saved Forecaster (no forecaster entry and series states in the run)")
    missing = [k for k in _KEYS if k not in meta]
    cols = meta.get("columns")
    if missing or not isinstance(cols, dict) or any(k not in cols for k in ("id", "time", "target")):
        raise ConfigError(f"{path}: manifest.json: the forecaster entry lacks {missing or ['columns']}")
    if not isinstance(meta["series"], list) or len(meta["series"]) != run.lane_state.batch_size:
        n = len(meta["series"]) if isinstance(meta["series"], list) else "no"
        raise ConfigError(f"{path}: manifest.json: {n} series entries for {run.lane_state.batch_size} stored states")
    fc = cls(
        run.model,
        meta["horizon"],
        meta["freq"],
        meta["likelihood"],
        id_col=cols["id"],
        time_col=cols["time"],
        target_col=cols["target"],
        futr_exog=meta["futr_exog"],
        hist_exog=meta["hist_exog"],
        stat_exog=meta["stat_exog"],
        lags=meta.get("lags", []),
        config=TrainConfig.from_json(run.config),
        steps=meta["steps"],
        batch_size=meta["batch_size"],
        num_samples=meta["num_samples"],
        alias=meta["alias"],
    )
    fc.features.exog = None if meta["exog_scaler"] is None else StandardScaler.from_json(meta["exog_scaler"])
    try:
        fc.spread_ = check_spread(meta.get("spread", 1.0), fc.model.likelihood)
    except ConfigError as exc:
        raise ConfigError(f"{path}: the stored forecaster's {exc}") from None
    int_ds = isinstance(step_of(fc.freq), int)
    tz, unit = meta.get("tz"), meta.get("ds_unit")
    if unit not in (None, "s", "ms", "us", "ns"):
        raise ConfigError(f"{path}: manifest.json: ds_unit {unit!r} is not one of s, ms, us, ns")
    for i, raw in enumerate(meta["series"]):
        where = f"{path}: manifest.json: series entry {i}"
        s = _series_entry(where, raw, fc)
        uid = s.pop("id")
        if uid in fc._series:
            raise ConfigError(f"{where}: series {uid!r} is stored twice")
        fc._ids.append(uid)
        fc._series[uid] = s | {
            "state": run.lane_state.select([i]),
            "ds": _stamp(where, uid, raw["ds"], int_ds, tz, unit),
        }
    return fc

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
    kind = "int" if isinstance(step_of(fc.freq), int) else "datetime"
    stamp = (lambda v: int(v)) if kind == "int" else (lambda v: require("pandas", "data").Timestamp(v).isoformat())
    meta = {
        "format": FORMAT,
        "horizon": fc.horizon,
        "freq": fc.freq,
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


def load_forecaster(cls: Any, path: str | os.PathLike[str]) -> Any:
    """The Forecaster (of class ``cls``) saved in ``path``, every series' state as it was."""
    from hiddenstate.runs.run import load_run

    run = load_run(path)
    meta = run.extra.get("forecaster")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or run.lane_state is None:
        raise ConfigError(f"{path}: not a saved Forecaster (no forecaster entry and series states in the run)")
    cols = meta["columns"]
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
    pd = require("pandas", "data")
    for i, s in enumerate(meta["series"]):
        fc._ids.append(s["id"])
        fc._series[s["id"]] = {
            "state": run.lane_state.select([i]),
            "scale": float(s["scale"]),
            "y": float(s["y"]),
            "hist": np.asarray(s["hist"], dtype=np.float64),
            "stat": np.asarray(s["stat"], dtype=np.float64),
            "ds": np.int64(s["ds"]) if int_ds else pd.Timestamp(s["ds"]).to_datetime64(),
            "tail": np.asarray(s.get("tail", []), dtype=np.float64),
        }
        if len(fc._series[s["id"]]["tail"]) != (max(fc.lags) if fc.lags else 0):
            raise ConfigError(f"{path}: series {s['id']!r}: its stored tail does not match the lags {fc.lags}")
    return fc

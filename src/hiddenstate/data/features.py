"""What a forecasting model reads at each row of a series: the target over its scale, the
target's lags, the next step's known covariates, the past covariates and the static ones.

``SeriesFeatures`` turns one series' rows (:class:`~hiddenstate.data.longframe.SeriesRows`,
target first, then ``futr_exog``, then ``hist_exog``) into model inputs ``(rows, n_in)``::

    column   y[t]/s | y[t+1-l]/s for l in lags | futr[t+1] | hist[t] | stat     (s: the series' scale)

and builds the input rows of a forecast from what a series keeps between calls: its last row,
its scale, its static values and its *tail*, the last ``max(lags)`` target values. The exogenous
columns are standardised with a :class:`StandardScaler` fitted on the training rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.data.longframe import SeriesRows
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.errors import ConfigError, DataError

__all__ = ["SeriesFeatures", "check_lags"]


def check_lags(lags: Sequence[int]) -> list[int]:
    """``lags`` sorted, each an int ``>= 2`` named once."""
    out = []
    for v in lags:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 2:
            raise ConfigError(f"lags: each lag must be an int >= 2 (lag 1, the last value, is an input), got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"lags: {list(lags)} names a lag twice")
    return sorted(out)


class SeriesFeatures:
    """The input columns of a series model (see the module docstring).

    >>> f = SeriesFeatures(lags=[2])
    >>> rows = SeriesRows("a", np.arange(4), np.array([[1.0], [2.0], [3.0], [4.0]]))
    >>> f.inputs(rows, {"scale": 1.0, "stat": np.zeros(0)}, 4).tolist()
    [[1.0, 1.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0]]
    >>> f.tail(rows.values[:, 0]).tolist()
    [3.0, 4.0]
    """

    def __init__(
        self,
        lags: Sequence[int] = (),
        futr_exog: Sequence[str] = (),
        hist_exog: Sequence[str] = (),
        stat_exog: Sequence[str] = (),
    ) -> None:
        self.lags = check_lags(lags)
        self.futr_exog, self.hist_exog, self.stat_exog = list(futr_exog), list(hist_exog), list(stat_exog)
        self.exog: StandardScaler | None = None  # fitted by fit_exog

    @property
    def n_in(self) -> int:
        return 1 + len(self.lags) + len(self.futr_exog) + len(self.hist_exog) + len(self.stat_exog)

    def columns(self, target: str) -> list[str]:
        """The input columns' names, in order."""
        lag_cols = [f"{target}-lag{v}" for v in self.lags]
        return [target, *lag_cols, *self.futr_exog, *self.hist_exog, *self.stat_exog]

    def lagged(self) -> list[tuple[int, int, int]]:
        """``sample_paths``'s ``lagged`` triples: each lag column reads the target's draws."""
        return [(1 + j, 0, lag) for j, lag in enumerate(self.lags)]

    # -- exogenous columns ---------------------------------------------------------------------

    def static(self, static_df: Any, ids: Sequence[Any], id_col: str) -> dict[Any, np.ndarray]:
        """Each series' ``stat_exog`` values from ``static_df`` (one row per series)."""
        if not self.stat_exog:
            return {uid: np.zeros(0) for uid in ids}
        pd = require("pandas", "data")
        if not isinstance(static_df, pd.DataFrame):
            raise DataError(f"static_df: stat_exog {self.stat_exog} declared, so static_df must be a DataFrame")
        for col in (id_col, *self.stat_exog):
            if col not in static_df.columns:
                raise DataError(f"static_df: missing column {col!r}")
        dup = static_df[id_col][static_df[id_col].duplicated()]
        if len(dup):
            raise DataError(f"static_df: series {dup.iloc[0]!r} has more than one row")
        rows = static_df.set_index(id_col)
        out = {}
        for uid in ids:
            if uid not in rows.index:
                raise DataError(f"static_df: no row for series {uid!r}")
            row = rows.loc[uid, self.stat_exog]
            values = np.empty(len(self.stat_exog))
            for k, col in enumerate(self.stat_exog):
                try:
                    values[k] = float(row[col])
                except (TypeError, ValueError):
                    message = f"static_df: series {uid!r}: column {col!r} is not a number: {row[col]!r}"
                    raise DataError(message) from None
                if not np.isfinite(values[k]):
                    raise DataError(f"static_df: series {uid!r}: column {col!r} is missing or not finite")
            out[uid] = values
        return out

    def fit_exog(self, series: dict[Any, SeriesRows], stat: dict[Any, np.ndarray], val_size: int) -> None:
        """Fit the exogenous columns' scaler on every series' rows but its last ``val_size``."""
        self.exog = None
        if len(self.futr_exog) + len(self.hist_exog) + len(self.stat_exog):
            train = []
            for u, s in series.items():
                n = len(s.ds) - val_size
                train.append(np.hstack([s.values[:n, 1:], np.broadcast_to(stat[u], (n, len(stat[u])))]))
            self.exog = StandardScaler.fit(train)

    def scaled_exog(self, futr: np.ndarray, hist: np.ndarray, stat: np.ndarray) -> np.ndarray:
        """``[futr, hist, stat]`` ``(n, n_exog)`` standardised with the fitted scaler."""
        parts = np.hstack([futr, hist, np.broadcast_to(stat, (len(futr), stat.size))])
        return self.exog.transform(parts) if self.exog is not None and parts.shape[1] else parts

    # -- rows of a history ---------------------------------------------------------------------

    def inputs(self, rows: SeriesRows, info: dict[str, Any], stop: int, before: np.ndarray | None = None) -> np.ndarray:
        """Input rows ``0 .. stop-1`` of a series ``(stop, n_in)``. ``info``: its ``scale`` and
        ``stat``; ``before``: the target values before row 0 (a stored tail), for the lags."""
        nf, nh = len(self.futr_exog), len(self.hist_exog)
        y, futr, hist = rows.values[:stop, 0], rows.values[1 : stop + 1, 1 : 1 + nf], rows.values[:stop, 1 + nf :]
        futr = np.vstack([futr, np.zeros((stop - len(futr), nf))])  # the last row's next futr: not used in training
        exog = self.scaled_exog(futr, hist[:, :nh], info["stat"])
        parts = [(y / info["scale"])[:, None]]
        if self.lags:
            ext = self._extended(rows.values[:, 0], before)
            pad = len(ext) - len(rows.values)
            at = np.arange(stop)[:, None] + pad + 1 - np.asarray(self.lags)[None]  # y[t + 1 - lag]
            parts.append(ext[at] / info["scale"])
        return np.hstack([*parts, exog])

    def _extended(self, y: np.ndarray, before: np.ndarray | None) -> np.ndarray:
        """``y`` after ``max(lags) - 1`` earlier values: ``before``'s last ones, padded with the
        series' first value where the series is younger than the longest lag."""
        need = max(self.lags) - 1
        prior = np.zeros(0) if before is None else np.asarray(before, dtype=np.float64)[max(0, len(before) - need) :]
        if len(prior) < need:
            fill = prior[0] if len(prior) else y[0]
            prior = np.concatenate([np.full(need - len(prior), fill), prior])
        return np.concatenate([prior, y])

    def tail(self, y: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        """The last ``max(lags)`` target values (the last row's included) kept with the state."""
        return self._extended(y, before)[-max(self.lags) :] if self.lags else np.zeros(0)

    # -- rows of a forecast --------------------------------------------------------------------

    def forecast_rows(self, info: dict[str, Any], futr: np.ndarray, h: int) -> np.ndarray:
        """The ``h`` input rows of a forecast ``(h, n_in)`` from what a series keeps: row 0 is its
        last row; the target columns of later rows are placeholders the paths' draws fill, and a
        lag column holds the history while the lag still reaches into it."""
        hist = np.broadcast_to(info["hist"], (h, len(self.hist_exog)))
        exog = self.scaled_exog(futr, hist, info["stat"])  # (h, n_exog)
        x = np.hstack([np.zeros((h, 1 + len(self.lags))), exog])
        x[0, 0] = info["y"] / info["scale"]
        tail, top = info["tail"], len(info["tail"]) - 1  # tail[top] is the last observed value
        for j, lag in enumerate(self.lags):  # step k reads y[n + k - lag]: history while k < lag
            k = np.arange(min(h, lag))
            x[k, 1 + j] = tail[top + 1 + k - lag] / info["scale"]
        return x

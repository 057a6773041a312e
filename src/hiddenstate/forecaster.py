"""Forecaster: probabilistic forecasts from DataFrames in the long format, with every series' state kept.

``df`` has one row per series and time step: ``unique_id``, ``ds``, ``y`` (names set by
``id_col``, ``time_col``, ``target_col``) and any exogenous columns, declared as ``futr_exog``
(known ahead: ``predict`` needs ``futr_df`` rows for the horizon), ``hist_exog`` (known up to
now) or ``stat_exog`` (one row per series in ``static_df``).

The model reads, at step ``t`` of a series, ``y[t] / scale`` (DeepAR's mean scale of the series),
``y[t + 1 - l] / scale`` for each of the ``lags`` ``l`` (seasonal lags, as DeepAR's: 24 and 168
for hourly data), the future covariates of step ``t + 1``, the past covariates of ``t`` and the
static ones, and gives the distribution of ``y[t + 1]`` in the series' units. A lag shorter than
the horizon reads each path's own earlier draws once the forecast reaches past the history.
After ``fit`` the forecaster keeps, for every series, the state that has read all of its rows but the last::

    fit / update:  rows 0 .. n-2 ──> state          last row n-1 kept (its next covariates unknown)
    predict:       state, row n-1 ──> paths over h steps, each fed its own draws
    update(new):   state, rows n-1 .. n+m-2 ──> state          (m new rows: cost m steps, no re-read)

``predict(df=...)`` recomputes the states over ``df`` with the fitted weights instead, and
leaves the stored ones alone. The output columns follow NeuralForecast: ``<alias>`` (the mean of
the paths), ``<alias>-median``, ``<alias>-lo-<level>`` and ``<alias>-hi-<level>``, and
``<alias>-ql<q>`` for explicit ``quantiles``.

>>> import pandas as pd, numpy as np
>>> df = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=60, freq="h"),
...                    "y": 10 + np.sin(np.arange(60) / 3)})
>>> fc = Forecaster(model=[LSTM(8)], horizon=4, freq="h", config=TrainConfig(epochs=1, progress=False))
>>> out = fc.fit(df).predict(seed=0)
>>> out.shape, out.columns[:4].tolist()
((4, 8), ['unique_id', 'ds', 'HiddenState', 'HiddenState-median'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiddenstate import metrics
from hiddenstate._extras import require
from hiddenstate.data.features import SeriesFeatures
from hiddenstate.data.lanes import StatefulBatches
from hiddenstate.data.longframe import (
    SeriesRows,
    check_finite,
    fmt_stamp,
    forecast_frame,
    future_stamps,
    quantile_columns,
    read_long,
    samples_frame,
    step_of,
)
from hiddenstate.data.scaled import ScaledBatches
from hiddenstate.errors import ConfigError, DataError
from hiddenstate.likelihood import mean_scale, resolve_likelihood
from hiddenstate.model import LSTM, SequenceModel
from hiddenstate.paths import check_seed, sample_paths, whole
from hiddenstate.state import LayerSpec, State
from hiddenstate.train.config import TrainConfig
from hiddenstate.train.trainer import Trainer

__all__ = ["Forecaster"]


def _plain_freq(freq: Any) -> Any:
    """``freq`` as it is saved: an int step, or a pandas frequency string (an offset object's own)."""
    if isinstance(freq, int | np.integer):
        return int(freq)
    return freq if isinstance(freq, str) else step_of(freq).freqstr


class Forecaster:
    """Fit, predict, sample, update, cross-validate and save over long-format DataFrames.

    Args:
        model: the recurrent layers (``[hs.LSTM(32), hs.LSTM(32)]`` when None) or a
            :class:`SequenceModel` with a likelihood head and the right ``input_size``.
        horizon: the default ``h`` of ``predict`` and ``sample``.
        freq: a pandas frequency (``"h"``, ``"15min"``) or an int step for integer ``ds``.
        likelihood: ``"studentt"`` (also True), ``"normal"`` or ``"negbin"``; ``"default"``: a
            passed SequenceModel's own head, else ``"studentt"``. It must match a passed model's.
        futr_exog, hist_exog, stat_exog: exogenous column names.
        lags: target lags ``>= 2`` fed as inputs (lag 1, the last value, always is); each series
            keeps its last ``max(lags)`` values with its state, so ``update`` stays cheap.
        config: the :class:`TrainConfig` (``state_policy="carry"``); steps, batch_size: the
            truncated-BPTT window and lanes.
        num_samples: paths per series for ``predict``; alias: the forecast column's name.
    """

    def __init__(
        self,
        model: Any = None,
        horizon: int = 1,
        freq: Any = "h",
        likelihood: Any = "default",
        *,
        id_col: str = "unique_id",
        time_col: str = "ds",
        target_col: str = "y",
        futr_exog: Sequence[str] = (),
        hist_exog: Sequence[str] = (),
        stat_exog: Sequence[str] = (),
        lags: Sequence[int] = (),
        config: TrainConfig | None = None,
        steps: int = 48,
        batch_size: int = 32,
        num_samples: int = 100,
        alias: str = "HiddenState",
    ) -> None:
        own = model.likelihood.name if isinstance(model, SequenceModel) and model.likelihood is not None else None
        if likelihood is None or likelihood is False:
            raise ConfigError("Forecaster forecasts distributions: likelihood must be 'studentt', 'normal' or 'negbin'")
        self.likelihood = resolve_likelihood(own if likelihood == "default" and own else likelihood)
        if own is not None and own != self.likelihood:
            raise ConfigError(f"likelihood {self.likelihood!r} differs from the model's own head, {own!r}")
        horizon = whole("horizon", horizon)
        step_of(freq)  # fails early on a bad freq
        self.horizon, self.freq = horizon, _plain_freq(freq)
        self.id_col, self.time_col, self.target_col = id_col, time_col, target_col
        self.features = SeriesFeatures(lags, futr_exog, hist_exog, stat_exog)
        self.config = config if config is not None else TrainConfig(epochs=20, lr=3e-3, progress=False)
        self.steps, self.batch_size, self.alias = steps, batch_size, alias
        self.num_samples = whole("num_samples", num_samples)
        n_in = self.features.n_in
        if model is None or (isinstance(model, Sequence) and all(isinstance(m, LayerSpec) for m in model)):
            layers = list(model) if model is not None else [LSTM(32), LSTM(32)]
            self.model = SequenceModel(n_in, 1, layers, likelihood=self.likelihood)
        elif isinstance(model, SequenceModel):
            if model.likelihood is None or model.input_size != n_in or model.output_size != 1:
                raise ConfigError(
                    f"model: expected a SequenceModel with a likelihood, input_size={n_in} and output_size=1"
                )
            self.model = model
        else:
            raise ConfigError(f"model: expected a list of layers (hs.LSTM(32), ...) or a SequenceModel, got {model!r}")
        self.input_columns = self.features.columns(target_col)
        self._ids: list[Any] = []
        self._series: dict[Any, dict[str, Any]] = {}  # per series: state, scale, last y/hist/ds, stat
        self.history_: Any = None  # the last fit's training History (epochs, losses, best epoch)
        self.train_chunks_ = 0
        self.spread_ = 1.0  # the factor on every step's scale parameter (see calibrate)
        self.calibration_: dict[str, Any] | None = None  # the last calibrate's windows and scores

    # -- reading frames ---------------------------------------------------------------------------

    def _read(self, df: Any, what: str, columns: Sequence[str], min_rows: int = 1) -> dict[Any, SeriesRows]:
        series = read_long(
            df, what, id_col=self.id_col, time_col=self.time_col, columns=columns, freq=self.freq, min_rows=min_rows
        )
        if self.likelihood == "negbin" and columns and columns[0] == self.target_col:
            for uid, s in series.items():  # before any weight or state moves
                neg = np.nonzero(s.values[:, 0] < 0)[0]
                if neg.size:
                    raise DataError(
                        f"{what}: series {uid!r}: column {self.target_col!r} is {s.values[neg[0], 0]:g} at "
                        f"{fmt_stamp(s.ds[neg[0]])}; likelihood 'negbin' models counts, which are >= 0"
                    )
        return series

    @property
    def lags(self) -> list[int]:
        return self.features.lags

    @property
    def futr_exog(self) -> list[str]:
        return self.features.futr_exog

    @property
    def hist_exog(self) -> list[str]:
        return self.features.hist_exog

    @property
    def stat_exog(self) -> list[str]:
        return self.features.stat_exog

    def _history_columns(self) -> list[str]:
        return [self.target_col, *self.futr_exog, *self.hist_exog]

    # -- fit ---------------------------------------------------------------------------------------

    def fit(self, df: Any, static_df: Any = None, val_size: int = 0, calibrate: bool = False) -> Forecaster:
        """Train on every series of ``df`` (the last ``val_size`` rows of each held out for the
        validation loss and early stopping), then store each series' state over its rows.

        ``calibrate``: then fit :attr:`spread_` on the validation rows, ``val_size // horizon``
        windows of ``horizon`` steps (see :meth:`calibrate`); otherwise the spread is 1."""
        if calibrate:
            if not self.likelihood_spreads():
                raise ConfigError(f"calibrate: likelihood {self.likelihood!r} has no scale parameter to widen")
            if val_size < self.horizon:
                raise ConfigError(
                    f"calibrate: needs val_size >= horizon ({self.horizon}) validation rows per series, got {val_size}"
                )
        series = self._read(df, "df", self._history_columns(), min_rows=3 + val_size)
        ids = list(series)
        stat = self.features.static(static_df, ids, self.id_col)
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        exog = self.features.exog
        try:
            return self._fit(series, ids, stat, val_size, calibrate)
        except BaseException:  # a refused or interrupted fit: the weights and scaler it started from
            self.model.load_state_dict(weights)
            self.features.exog = exog
            raise
        finally:
            self.model.eval()

    def _fit(
        self, series: dict[Any, SeriesRows], ids: list[Any], stat: dict[Any, np.ndarray], val_size: int, calibrate: bool
    ) -> Forecaster:
        self.features.fit_exog(series, stat, val_size)
        # DeepAR's mean scale per series; a silent (all-zero) series takes the others' mean scale
        means = np.array([[float(np.abs(s.values[: len(s.ds) - val_size, 0]).mean()) for s in series.values()]])
        scales = mean_scale(means)
        infos = {uid: {"scale": float(scales[k]), "stat": stat[uid]} for k, uid in enumerate(series)}
        inputs = {u: self.features.inputs(s, infos[u], len(s.ds)) for u, s in series.items()}
        targets = {u: s.values[:, :1] for u, s in series.items()}
        scales = np.array([[infos[u]["scale"]] for u in ids])
        cut = lambda a, u: a[u][: len(a[u]) - val_size]  # noqa: E731
        train_batches = ScaledBatches(
            StatefulBatches([cut(inputs, u) for u in ids], [cut(targets, u) for u in ids], self.batch_size, self.steps),
            scales,
        )
        val = None
        if val_size:
            whole = StatefulBatches(
                [inputs[u] for u in ids], [targets[u] for u in ids], self.batch_size, self.steps, split=False
            )
            val = ScaledBatches(whole, scales, score_from=[len(series[u].ds) - val_size for u in ids])
        history = Trainer(self.model, self.config).fit(train_batches, val)
        self.model.eval()
        kept = self._ids, self._series, self.spread_, self.calibration_
        self._ids, self._series = [], {}
        try:
            self._store(series, infos)
            self.spread_, self.calibration_ = 1.0, None
            if calibrate:
                self._calibrate(series, val_size // self.horizon)
        except BaseException:
            self._ids, self._series, self.spread_, self.calibration_ = kept
            raise
        self.history_, self.train_chunks_ = history, len(train_batches)  # optimizer steps per epoch
        return self

    def likelihood_spreads(self) -> bool:
        """Whether the likelihood has a scale parameter :attr:`spread_` can widen (Student-t, normal)."""
        return bool(self.model.likelihood.spreads)

    # -- calibration -------------------------------------------------------------------------------

    def calibrate(
        self, df: Any, n_windows: int = 1, num_samples: int = 100, seed: int = 0, grid: Sequence[float] | None = None
    ) -> Forecaster:
        """Fit :attr:`spread_`, the factor on every step's scale parameter, on the last
        ``n_windows`` windows of ``horizon`` rows of each series of ``df`` (rows the weights were
        not trained on: ``fit(..., val_size=..., calibrate=True)`` uses its validation rows).

        The state is carried once over each series to the first window and from window to window;
        window ``k``'s paths are those ``sample(n_paths=num_samples, seed=seed + k)`` would draw
        from its state, with the same random numbers for every factor, and the factor with the
        least CRPS summed over every window, series and step is kept. ``grid``: the factors
        to try (default: 0.25 .. 4 in steps of sqrt(2), then steps of 2^(1/8) around the best).
        The stored states are left as they were; ``calibration_`` holds the factors and scores."""
        self._fitted()
        if not self.likelihood_spreads():
            raise ConfigError(f"calibrate: likelihood {self.likelihood!r} has no scale parameter to widen")
        if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
            raise ConfigError(f"n_windows must be an int >= 1, got {n_windows!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int (window k draws with seed + k), got {seed!r}")
        series = self._read(df, "df", self._history_columns(), min_rows=1)
        for u in series:
            self._known(u, "calibrate")
        return self._calibrate(series, n_windows, num_samples, seed, grid)

    def _calibrate(
        self,
        series: dict[Any, SeriesRows],
        n_windows: int,
        num_samples: int = 100,
        seed: int = 0,
        grid: Sequence[float] | None = None,
    ) -> Forecaster:
        from hiddenstate.calibration import search_spread

        h, nf = self.horizon, len(self.futr_exog)
        starts = {}
        for u, s in series.items():
            first = len(s.ds) - n_windows * h
            if first < 3:
                raise DataError(f"df: series {u!r} has {len(s.ds)} rows, too few for {n_windows} windows of {h}")
            starts[u] = [first + k * h for k in range(n_windows)]
        ids = list(series)
        base = {u: {"scale": self._series[u]["scale"], "stat": self._series[u]["stat"]} for u in ids}
        head = {u: SeriesRows(u, s.ds[: starts[u][0]], s.values[: starts[u][0]]) for u, s in series.items()}
        states = self._warm(head, base)
        infos = {u: base[u] | self._last(head[u], states[u]) for u in ids}
        windows = []  # per window: what each series keeps at its start, the window's covariates, the truth
        for k in range(n_windows):  # carry each series' state from window to window
            if k:
                infos = self._carry(
                    infos, {u: self._rows(s, starts[u][k - 1], starts[u][k]) for u, s in series.items()}
                )
            span = {u: slice(starts[u][k], starts[u][k] + h) for u in ids}
            futr = [series[u].values[span[u], 1 : 1 + nf] for u in ids]
            windows.append(([infos[u] for u in ids], futr, np.stack([series[u].values[span[u], 0] for u in ids])))

        def score(spread: float) -> float:
            """The CRPS summed over every window, series and step; window k's paths are those of
            ``sample(seed=seed + k)`` from its state, the same random numbers for every spread."""
            total = 0.0
            for k, (kept, futr, y) in enumerate(windows):
                paths = self._draw(kept, futr, h, num_samples, seed + k, spread)[..., 0]
                total += metrics.crps(paths, y) * y.size
            return total

        self.spread_, self.calibration_ = search_spread(score, grid)
        self.calibration_ |= {"windows": n_windows, "seed": seed, "num_samples": num_samples}
        return self

    @staticmethod
    def _rows(s: SeriesRows, a: int, b: int) -> SeriesRows:
        return SeriesRows(s.uid, s.ds[a:b], s.values[a:b])

    def _store(self, series: dict[Any, SeriesRows], infos: dict[Any, dict[str, Any]]) -> None:
        """Each series' state over all its rows but the last, and what the last row holds."""
        states = self._warm(series, infos)
        for uid, s in series.items():
            info = dict(infos[uid]) | self._last(s, states[uid])
            if uid not in self._series:
                self._ids.append(uid)
            self._series[uid] = info

    def _last(self, s: SeriesRows, state: State, before: np.ndarray | None = None) -> dict[str, Any]:
        """What a series keeps after reading ``s``: its state, last row (y, hist, ds) and lag tail
        (``before``: the stored tail ``s`` continues)."""
        nf = len(self.futr_exog)
        y = s.values[:, 0]
        tail = self.features.tail(y, before)
        return {"state": state, "y": float(y[-1]), "hist": s.values[-1, 1 + nf :], "ds": s.ds[-1], "tail": tail}

    def _warm(self, series: dict[Any, SeriesRows], infos: dict[Any, dict[str, Any]]) -> dict[Any, State]:
        """Run each series' rows 0 .. n-2 from the initial state; series of one length in one batch."""
        by_len: dict[int, list[Any]] = {}
        for uid, s in series.items():
            by_len.setdefault(len(s.ds), []).append(uid)
        out: dict[Any, State] = {}
        for n, uids in by_len.items():
            x = np.stack([self.features.inputs(series[u], infos[u], n - 1) for u in uids])  # (series, n-1, n_in)
            state = self._advance(None, x)
            for i, u in enumerate(uids):
                out[u] = state.select([i])
        return out

    def _advance(self, state: State | None, x: np.ndarray) -> State:
        p = next(self.model.parameters())
        xt = torch.as_tensor(x).to(p.device, p.dtype)
        with torch.no_grad():
            if state is None:
                state = self.model.initial_state(xt.shape[0])
            if xt.shape[1] == 0:
                return state
            _, state = self.model(xt, state)
        return state

    # -- update ------------------------------------------------------------------------------------

    def update(self, df_new: Any) -> Forecaster:
        """Advance each series' stored state over its new rows only (cost: the new rows)."""
        self._fitted()
        new = self._read(df_new, "df_new", self._history_columns())
        for uid in new:
            self._known(uid, "update")
        for uid, s in new.items():  # every check before any state changes
            first = future_stamps(self._series[uid]["ds"], self.freq, 1)[0]
            if s.ds[0] != first:
                raise DataError(
                    f"df_new: series {uid!r}: new rows must start at {fmt_stamp(first)}, got {fmt_stamp(s.ds[0])}"
                )
        self._series.update(self._carry(self._series, new))
        return self

    def _carry(self, infos: dict[Any, dict[str, Any]], new: dict[Any, SeriesRows]) -> dict[Any, dict[str, Any]]:
        """What each series in ``new`` keeps after reading its rows ``new[u]``, which continue ``infos[u]``."""
        nf = len(self.futr_exog)
        groups: dict[int, list[Any]] = {}
        rows: dict[Any, np.ndarray] = {}
        for uid, s in new.items():
            info = infos[uid]
            old = np.concatenate([[info["y"]], np.zeros(nf), info["hist"]])[None]  # the stored last row
            both = SeriesRows(uid, np.concatenate([[info["ds"]], s.ds]), np.vstack([old, s.values]))
            before = info["tail"][:-1]  # the values before the old last row, for the lags
            rows[uid] = self.features.inputs(both, info, len(s.ds), before)  # old last row .. new second-to-last
            groups.setdefault(len(s.ds), []).append(uid)
        out = {}
        for uids in groups.values():
            state = self._advance(State.cat([infos[u]["state"] for u in uids]), np.stack([rows[u] for u in uids]))
            for i, u in enumerate(uids):
                out[u] = dict(infos[u]) | self._last(new[u], state.select([i]), before=infos[u]["tail"])
        return out

    # -- predict and sample ------------------------------------------------------------------------

    def _fitted(self) -> None:
        if not self._series:
            raise ConfigError("the forecaster is not fitted: call fit(df) first")

    def _known(self, uid: Any, what: str) -> dict[str, Any]:
        if uid not in self._series:
            raise DataError(f"{what}: unknown series {uid!r}; the forecaster was fitted on {len(self._ids)} series")
        return self._series[uid]

    def _paths(self, df: Any, h: int | None, futr_df: Any, num_samples: int, seed: int | None) -> tuple[Any, ...]:
        """Paths ``(num_samples, series, h, 1)`` in the series' units, the ids and their future stamps."""
        self._fitted()
        h = whole("h", self.horizon if h is None else h)
        if df is not None:  # the states recomputed over df from the fitted weights; the stored ones stay
            series = self._read(df, "df", self._history_columns(), min_rows=2)
            infos = {u: dict(self._known(u, "predict")) for u in series}
            states = self._warm(series, infos)
            for u, s in series.items():
                infos[u].update(self._last(s, states[u]))
            ids = list(series)
        else:
            infos, ids = self._series, self._ids
        stamps = {u: future_stamps(infos[u]["ds"], self.freq, h) for u in ids}
        futr = self._future(futr_df, ids, stamps, h)
        paths = self._draw([infos[u] for u in ids], [futr[u] for u in ids], h, num_samples, seed, self.spread_)
        return paths, ids, stamps

    def _draw(
        self, infos: Sequence[dict[str, Any]], futr: Sequence[np.ndarray], h: int, n: int, seed: Any, spread: float
    ) -> np.ndarray:
        """Paths ``(n, len(infos), h, 1)`` in the series' units from what each series keeps."""
        rows = [self.features.forecast_rows(info, f, h) for info, f in zip(infos, futr, strict=True)]  # (h, n_in)
        state = State.cat([info["state"] for info in infos])
        scale = np.array([[info["scale"]] for info in infos])
        paths = sample_paths(
            self.model,
            state,
            np.stack([x[0] for x in rows]),
            h,
            n,
            seed,
            scale=scale,
            target_index=[0],
            ahead=np.stack([x[1:] for x in rows]),
            lagged=self.features.lagged(),
            spread=spread,
        )
        return paths.double().cpu().numpy()

    def _future(self, futr_df: Any, ids: Sequence[Any], stamps: dict[Any, np.ndarray], h: int) -> dict[Any, np.ndarray]:
        if not self.futr_exog:
            return {u: np.zeros((h, 0)) for u in ids}
        if futr_df is None:
            raise DataError(f"futr_df: needed for the future exogenous columns {self.futr_exog}")
        rows = read_long(  # a lookup by stamp: rows outside the forecast may be missing or hold gaps
            futr_df, "futr_df", id_col=self.id_col, time_col=self.time_col, columns=self.futr_exog, freq=self.freq,
            history=False,
        )  # fmt: skip
        out = {}
        for u in ids:
            want = stamps[u]
            have = rows.get(u)
            ds = want[:0] if have is None else have.ds  # read_long sorted them: bisection finds each
            at = np.searchsorted(ds, want)
            found = at < len(ds)
            found[found] = ds[at[found]] == want[found]
            if not found.all():
                missing = want[~found]
                raise DataError(
                    f"futr_df: series {u!r} lacks future exogenous rows for {len(missing)} of the {h} steps "
                    f"{fmt_stamp(want[0])} .. {fmt_stamp(want[-1])} (first missing: {fmt_stamp(missing[0])})"
                )
            out[u] = have.values[at]
            check_finite("futr_df", SeriesRows(u, want, out[u]), self.futr_exog)
        return out

    def predict(
        self,
        df: Any = None,
        h: int | None = None,
        futr_df: Any = None,
        level: Sequence[int] | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        num_samples: int | None = None,
    ) -> Any:
        """``[unique_id, ds, <alias>, <alias>-median, <alias>-lo-90, <alias>-lo-80, <alias>-hi-80,
        <alias>-hi-90]`` (``level`` changes the intervals; ``quantiles`` gives ``<alias>-ql<q>``
        columns instead), from the stored states or, with ``df``, from states over ``df``."""
        n = self.num_samples if num_samples is None else num_samples
        paths, ids, stamps = self._paths(df, h, futr_df, n, seed)
        return forecast_frame(paths[..., 0], ids, stamps, (self.id_col, self.time_col, self.alias), level, quantiles)

    def sample(self, n_paths: int = 100, seed: int | None = None, h: int | None = None, futr_df: Any = None) -> Any:
        """``[unique_id, ds, sample_id, <alias>]``: ``n_paths`` paths per series from the stored states."""
        paths, ids, stamps = self._paths(None, h, futr_df, n_paths, seed)
        return samples_frame(paths[..., 0], ids, stamps, (self.id_col, self.time_col, self.alias))

    def plot(
        self,
        path: str | os.PathLike[str],
        df: Any = None,
        forecasts: Any = None,
        *,
        ids: Sequence[Any] | None = None,
        level: Sequence[int] | None = None,
        n_paths: int = 0,
        seed: int | None = None,
        futr_df: Any = None,
        history_rows: int | None = None,
    ) -> Path:
        """Write fan charts (a PNG, one panel per series; ``pip install 'hiddenstate[cli]'``).

        ``forecasts``: a :meth:`predict` or :meth:`cross_validation` frame; None: ``predict``
        from the stored states at ``level`` (default 50 and 90) and ``seed``. ``df``, the history
        in this forecaster's columns, is drawn only (the states are not recomputed from it), up
        to ``history_rows`` rows (default: four horizons) before each forecast, and its rows
        inside the forecast span as the truth. ``n_paths`` > 0 adds that many sample paths
        (:meth:`sample`, the same ``seed``). See :func:`hiddenstate.plots.fan_figure`.
        """
        require("matplotlib", "cli")
        from hiddenstate.plots import plot_fan

        if isinstance(n_paths, bool) or not isinstance(n_paths, int) or n_paths < 0:
            raise ConfigError(f"n_paths must be an int >= 0, got {n_paths!r}")
        if forecasts is None:
            forecasts = self.predict(futr_df=futr_df, level=level or (50, 90), seed=seed)
        samples = self.sample(n_paths=n_paths, seed=seed, futr_df=futr_df) if n_paths else None
        return plot_fan(
            path, df, forecasts, id_col=self.id_col, time_col=self.time_col, target_col=self.target_col,
            alias=self.alias, ids=ids, level=level, samples=samples,
            history_rows=4 * self.horizon if history_rows is None else history_rows,
        )  # fmt: skip

    # -- cross-validation --------------------------------------------------------------------------

    def cross_validation(
        self,
        df: Any,
        n_windows: int = 1,
        step_size: int | None = None,
        refit: bool = False,
        static_df: Any = None,
        level: Sequence[int] | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        h: int | None = None,
    ) -> Any:
        """``[unique_id, ds, cutoff, <alias>..., y]`` over ``n_windows`` windows ``step_size`` apart
        at each series' end. Fits on the rows up to the first cutoff (each cutoff with ``refit``),
        then carries each series' state from cutoff to cutoff with :meth:`update`: one pass over
        each series, not one per window. Ends with the states at the last cutoff."""
        pd = require("pandas", "data")
        h = whole("h", self.horizon if h is None else h)
        step = whole("step_size", h if step_size is None else step_size)
        n_windows = whole("n_windows", n_windows)
        quantile_columns(self.alias, level, quantiles)  # every argument checked before the first fit
        check_seed(seed)
        series = self._read(df, "df", self._history_columns(), min_rows=1)
        cuts = {}
        for u, s in series.items():
            first = len(s.ds) - h - (n_windows - 1) * step  # rows before the first window
            if first < 3:
                raise DataError(f"df: series {u!r} has {len(s.ds)} rows, too few for {n_windows} windows of {h}")
            cuts[u] = [first + k * step for k in range(n_windows)]
        frames = []
        pos = df.groupby(self.id_col, sort=False).cumcount().to_numpy()  # row within its series (checked sorted)
        zero = dict.fromkeys(series, 0)
        for k in range(n_windows):
            stop = {u: c[k] for u, c in cuts.items()}
            if k == 0 or refit:
                self.fit(self._rows_between(df, pos, zero, stop), static_df=static_df)
            else:  # carry: advance each series over the rows since the previous cutoff
                self.update(self._rows_between(df, pos, {u: c[k - 1] for u, c in cuts.items()}, stop))
            window = self.predict(h=h, futr_df=self._futr_rows(df), level=level, quantiles=quantiles, seed=seed)
            window.insert(2, "cutoff", window[self.id_col].map({u: series[u].ds[c[k] - 1] for u, c in cuts.items()}))
            truth = np.concatenate([series[u].values[c[k] : c[k] + h, 0] for u, c in cuts.items()])
            window[self.target_col] = truth
            frames.append(window)
        return pd.concat(frames, ignore_index=True)

    def _rows_between(self, df: Any, pos: np.ndarray, start: dict[Any, int], stop: dict[Any, int]) -> Any:
        """The rows of ``df`` at positions ``start[u] <= pos < stop[u]`` within each series ``u``."""
        uid = df[self.id_col]
        lo, hi = uid.map(start).to_numpy(), uid.map(stop).to_numpy()
        return df[(pos >= lo) & (pos < hi)]

    def _futr_rows(self, df: Any) -> Any:
        return df[[self.id_col, self.time_col, *self.futr_exog]] if self.futr_exog else None

    # -- save and load -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model and every series' state, scale and last row into the run directory
        ``path`` (see :mod:`hiddenstate.forecaster_store`)."""
        from hiddenstate.forecaster_store import save_forecaster

        return save_forecaster(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Forecaster:
        """A forecaster saved by :meth:`save`, every series' state as it was (no pickle: JSON and safetensors)."""
        from hiddenstate.forecaster_store import load_forecaster

        return load_forecaster(cls, path)

"""Probabilistic forecasting beside GluonTS's torch DeepAR and statsforecast, in one run.

    python benchmarks/probabilistic.py                       # ETTh1, ETTm1, taylor
    python benchmarks/probabilistic.py --datasets etth1 --epochs 2 --quick
    python benchmarks/probabilistic.py --datasets etth1,taylor --seeds 0,1,2,3,4,5,6,7 --no-stats

Data (raw scale): ETTh1 and ETTm1 (``../shared/data/ett``, or ``$HIDDENSTATE_ETT``), each of the 7
columns a series, and pmdarima's ``taylor`` half-hourly electricity series. Horizon 48. The test
windows are GIFT-Eval's: ``min(ceil(0.1 * length / 48), 20)`` non-overlapping windows at the end of
each series; every model trains on the rows before the first window only.

- ``hiddenstate``: ``hs.Forecaster`` (2 x LSTM(40), ``--dropout`` between them, default 0;
  Student-t, mean scaling), seasonal lags of the target (``--lags``, default one to seven days
  and fourteen days: 24, 48, ..., 168, 336 hourly),
  hour-of-day and day-of-week as known future covariates (``--no-calendar`` drops them; DeepAR
  builds such time features itself), each series whole in one lane (``--lanes``), so training
  carries the state over as long a history as inference does, in chunks of ``--steps`` rows
  (default two days, at most 96). The last ``--val`` rows before the first window (default: as
  many as the test span) are the validation rows: Adam at ``--lr`` 3e-3, times ``--decay`` 0.9
  at each epoch after the first, up to ``--epochs`` 40 epochs, early stopping after
  ``--patience`` epochs without a better validation loss; validated and kept: the moving average
  of the weights (``--ema`` 0.995, ``TrainConfig.ema``; 0 turns it off), the best epoch's.
  The average, its decay and the 40 epochs were chosen on the validation windows' CRPS.
  ``--calibrate`` also fits the spread (the factor on every step's scale) on the validation rows'
  windows of 48 (``Forecaster.calibrate``) and adds a row "hiddenstate, calibrated" that scores
  the same random numbers at that spread (the timings are then the calibrated sampling's, which
  costs the same). Fitted once; the state is carried from
  window to window with ``update`` (the rows are read once), 100 paths per window.
- ``deepar``: ``gluonts.torch.model.deepar.DeepAREstimator`` (2 x LSTM(40), Student-t, mean
  scaling, GluonTS's default lags, time features and context = 48), batch 32, trained on as many
  series-steps through the loss as hiddenstate took (a window is 48 context + 48 ahead steps), on
  the same rows, with the same validation rows for its best checkpoint; each window is predicted
  from its context (100 paths).
- ``seasonal_naive``, ``auto_ets``: statsforecast, fitted on the last ``--stats-rows`` rows
  before the first window, intervals at levels 20..95 (``cross_validation(refit=False)``).

Metrics (``hiddenstate.metrics``): CRPS of the 100 paths (``crps(..., normalize=True)``: summed
over every window and step, over the sum of ``|y|``; the neural models only, statsforecast gives
intervals, not paths), wQL, GluonTS's / GIFT-Eval's mean weighted quantile loss over 0.1..0.9
(what GIFT-Eval's tables call CRPS), MASE of the median and MSIS (alpha 0.05) on the seasonal naive scale of each
window's history (season 24 hourly, 96 for 15 minutes, 48 half-hourly), coverage of the 80% and 90%
intervals. Timings: training; predicting one window of every series with 100 paths (the median of
``--rounds`` timings, ours and DeepAR's in turn, after both are trained); and, for
hiddenstate, ``update`` with one new row per series then ``predict`` against ``predict(df=full
history)`` (the medians of ``--rounds`` timings of each, in turn, every update from a copy of the
same stored states). Wall times on a shared machine are noisy: the ratios in one run are what to read.

``--plot DIR`` writes ``DIR/<dataset>-seed<N>.png``: every series' last test window, the 50% and
90% intervals and median of each neural model's paths beside the truth (matplotlib; these
figures hold the data, so they stay out of the repository).

``--seeds`` trains and scores both neural models at each seed in turn (statsforecast, which is
deterministic, once), then adds a mean row per model and, per dataset, the CRPS pairs seed by
seed: how often ours is at or below DeepAR's, and the mean difference with its paired standard
error. One seed's CRPS moves by a few percent with the seed (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import hiddenstate as hs  # noqa: E402
from hiddenstate import metrics  # noqa: E402

H = 48
Q = np.array(metrics.QUANTILES)
LEVELS = (20, 40, 60, 80, 90, 95)
ETT = Path(os.environ.get("HIDDENSTATE_ETT", ROOT.parent / "shared" / "data" / "ett"))


def load(name: str) -> tuple[Any, str, int]:
    """A long frame [unique_id, ds, y], its pandas freq and its season."""
    import pandas as pd

    if name == "taylor":
        from pmdarima.datasets import load_taylor

        y = np.asarray(load_taylor(), dtype=np.float64)
        ds = pd.date_range("2000-06-05", periods=len(y), freq="30min")
        return pd.DataFrame({"unique_id": "taylor", "ds": ds, "y": y}), "30min", 48
    path = ETT / {"etth1": "ETTh1.csv", "ettm1": "ETTm1.csv"}[name]
    wide = pd.read_csv(path, parse_dates=["date"])
    long = wide.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    freq, season = ("h", 24) if name == "etth1" else ("15min", 96)
    return long[["unique_id", "ds", "y"]].reset_index(drop=True), freq, season


def windows(n: int) -> list[int]:
    """GIFT-Eval's test windows: the first row of each, non-overlapping, at the end of the series."""
    w = min(math.ceil(0.1 * n / H), 20)
    return [n - (w - k) * H for k in range(w)]


class Scores:
    """Per model: quantiles (9, items, H), lo/hi at 80/90/95, and per item the history for the scale."""

    def __init__(self, y: np.ndarray, histories: list[np.ndarray], season: int) -> None:
        self.y, self.histories, self.season = y, histories, season  # y: (items, H)

    def row(
        self, qs: np.ndarray, lo: dict[int, np.ndarray], hi: dict[int, np.ndarray], samples: np.ndarray | None = None
    ) -> dict[str, float]:
        med = qs[list(Q).index(0.5)]
        items = range(len(self.y))
        out = {} if samples is None else {"CRPS": metrics.crps(samples, self.y, normalize=True)}
        return out | {
            "wQL": metrics.weighted_quantile_loss(qs, self.y),
            "MASE": float(np.mean([metrics.mase(med[i], self.y[i], self.histories[i], self.season) for i in items])),
            "MSIS": float(
                np.mean([metrics.msis(lo[95][i], hi[95][i], self.y[i], self.histories[i], self.season) for i in items])
            ),
            "cov80": metrics.coverage(lo[80], hi[80], self.y),
            "cov90": metrics.coverage(lo[90], hi[90], self.y),
        }


def from_samples(samples: np.ndarray) -> tuple[Any, ...]:
    """``samples`` (num_samples, items, H) -> quantiles, intervals and the samples."""
    qs = np.quantile(samples, Q, axis=0)
    lo = {v: np.quantile(samples, metrics.central_interval(v)[0], axis=0) for v in (80, 90, 95)}
    hi = {v: np.quantile(samples, metrics.central_interval(v)[1], axis=0) for v in (80, 90, 95)}
    return qs, lo, hi, samples


def lags_for(season: int, spec: str, freq: str = "h") -> list[int]:
    """``auto``: one to seven seasons (days) and fourteen; ``gluonts``: DeepAR's own lags for
    ``freq`` but lag 1 (our ``y[t]`` input); ``none``: no lags; else a comma-separated list."""
    if spec == "auto":
        return [season * k for k in (1, 2, 3, 4, 5, 6, 7, 14)]
    if spec == "gluonts":
        from gluonts.time_feature import get_lags_for_frequency

        return [v for v in get_lags_for_frequency(freq) if v > 1]
    return [] if spec == "none" else [int(v) for v in spec.split(",")]


def run_hiddenstate(
    df: Any, freq: str, cuts: list[int], season: int, val: int, args: argparse.Namespace
) -> dict[str, Any]:
    steps = args.steps or min(2 * season, 2 * H)  # gradients reach back over two days, at most 96 rows
    lanes = args.lanes or df["unique_id"].nunique()  # default: each series whole in one lane, as at inference
    decay = {"schedule": "exponential", "gamma": args.decay, "step_size": 1} if args.decay < 1 else {}
    cfg = hs.TrainConfig(
        epochs=args.epochs, lr=args.lr, progress=False, device="cpu", seed=args.seed, threads=1,
        patience=args.patience, ema=args.ema or None, **decay,
    )  # fmt: skip
    torch_seed(args.seed)  # the weights' initialisation too
    futr = list(CALENDAR) if args.calendar else []
    layers = [hs.LSTM(40), hs.LSTM(40)]
    static_df = static_features(df, cuts[0] - val, args.static)
    stat = [c for c in static_df.columns if c != "unique_id"] if static_df is not None else []
    opts = dict(horizon=H, freq=freq, likelihood="studentt", config=cfg, steps=steps, batch_size=lanes,
                futr_exog=futr, stat_exog=stat, lags=lags_for(season, args.lags, freq))  # fmt: skip
    fc = hs.Forecaster(layers, **opts)
    if args.dropout:  # the same model with dropout between the layers (DeepAR's default is 0.1)
        torch_seed(args.seed)
        model = hs.SequenceModel(fc.features.n_in, 1, layers, likelihood="studentt", dropout=args.dropout)
        fc = hs.Forecaster(model, **opts)
    if futr:
        df = with_calendar(df)
    pos = df.groupby("unique_id", sort=False).cumcount().to_numpy()
    t0 = time.perf_counter()
    fc.fit(df[pos < cuts[0]], static_df=static_df, val_size=val)
    train_s = time.perf_counter() - t0
    calib_s, val_crps, val_best = 0.0, float("nan"), float("nan")
    if val >= H:  # the validation windows' CRPS (normalized) at spread 1; with --calibrate, the spread
        t0 = time.perf_counter()  # fitted there as well (what fit(calibrate=True) does)
        fc.calibrate(df[pos < cuts[0]], n_windows=val // H, grid=None if args.calibrate else [1.0])
        calib_s = time.perf_counter() - t0
        span = df[(pos >= cuts[0] - val // H * H) & (pos < cuts[0])]["y"].abs().sum()
        cal = fc.calibration_
        val_crps, val_best = cal["scores"][cal["spreads"].index(1.0)] / span, min(cal["scores"]) / span
    epochs, chunks = len(fc.history_.rows), fc.train_chunks_
    ids = list(df["unique_id"].unique())
    samples, raw, predict_s = [], [], []
    spread = fc.spread_
    for k, cut in enumerate(cuts):
        if k:
            fc.update(df[(pos >= cuts[k - 1]) & (pos < cut)])  # the state carried over the last window's rows
        t0 = time.perf_counter()
        ahead = df[(pos >= cut) & (pos < cut + H)] if futr else None  # the window's known covariates
        s = fc.sample(n_paths=100, seed=k, futr_df=ahead)
        predict_s.append(time.perf_counter() - t0)
        samples.append(s["HiddenState"].to_numpy().reshape(100, len(ids), H))
        if args.calibrate:  # the same paths' random numbers at the model's own spread, for the table
            fc.spread_ = 1.0
            raw.append(
                fc.sample(n_paths=100, seed=k, futr_df=ahead)["HiddenState"].to_numpy().reshape(100, len(ids), H)
            )
            fc.spread_ = spread
    # one new row per series: update + predict, against predict over the whole history
    last = cuts[-1]
    new, history = df[pos == last], df[pos <= last]
    ahead = df[(pos > last) & (pos <= last + H)] if futr else None
    advance, updated, repredicted = [], [], []
    for _ in range(args.rounds):  # in turn, each from the same stored states (a copy, made untimed)
        carried = copy.deepcopy(fc)
        t0 = time.perf_counter()
        carried.update(new)
        t1 = time.perf_counter()
        carried.predict(seed=0, futr_df=ahead)
        t2 = time.perf_counter()
        fc.predict(df=history, seed=0, futr_df=ahead)  # the stored states stay as they were
        t3 = time.perf_counter()
        advance.append(t1 - t0)
        updated.append(t2 - t0)
        repredicted.append(t3 - t2)
    advance_s, update_s, repredict_s = (float(np.median(v)) for v in (advance, updated, repredicted))
    fc = carried  # the states after the new row, where the sampling timings start
    n_steps = chunks * epochs
    return {
        "samples": np.concatenate(samples, axis=1),  # (100, windows * series, H), window-major
        "raw_samples": np.concatenate(raw, axis=1) if raw else None,  # the same at spread 1
        "spread": spread,
        "calib_s": calib_s,
        "val_crps": val_crps,
        "val_best": val_best,
        "train_s": train_s,
        "predict_s": float(np.median(predict_s)),
        "update_s": update_s,
        "repredict_s": repredict_s,
        "advance_s": advance_s,
        "optimizer_steps": n_steps,
        "epochs": epochs,
        "best_epoch": fc.history_.best_epoch,
        "chunk": steps,
        "sample_steps": n_steps * lanes * steps,  # series-steps through the loss
        "sample_once": lambda: fc.sample(n_paths=100, seed=0, futr_df=ahead),  # the next window, 100 paths
    }


def static_features(df: Any, rows: int, kind: str) -> Any:
    """A static input per series (``--static``): ``logscale``, the log of its mean ``|y|`` over its
    first ``rows`` rows (the training rows; DeepAR reads the log of its scale the same way), or
    ``id``, a one-hot column per series; ``none``: no static inputs (None)."""
    import pandas as pd

    if kind == "none":
        return None
    ids = list(df["unique_id"].unique())
    if kind == "id":
        return pd.DataFrame({"unique_id": ids, **{f"is_{i}": [float(u == v) for u in ids] for i, v in enumerate(ids)}})
    if kind != "logscale":
        raise SystemExit(f"--static: expected none, logscale or id, got {kind!r}")
    pos = df.groupby("unique_id", sort=False).cumcount().to_numpy()
    head = df[pos < rows]
    scale = head["y"].abs().groupby(head["unique_id"], sort=False).mean()
    return pd.DataFrame({"unique_id": ids, "log_scale": [float(np.log(max(scale[u], 1e-10))) for u in ids]})


CALENDAR = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")


def with_calendar(df: Any) -> Any:
    """``df`` with hour-of-day and day-of-week as known future covariates (DeepAR builds the same
    kind of time features itself), extended ``H`` steps past the end for the last forecast."""
    import pandas as pd

    ends = df.groupby("unique_id", sort=False)["ds"].max()
    step = df["ds"].iloc[1] - df["ds"].iloc[0]
    extra = pd.DataFrame(
        [(u, t + step * (i + 1)) for u, t in ends.items() for i in range(H)], columns=["unique_id", "ds"]
    )
    out = pd.concat([df, extra], ignore_index=True)
    hour = out["ds"].dt.hour + out["ds"].dt.minute / 60
    dow = out["ds"].dt.dayofweek + hour / 24
    out["hour_sin"], out["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    out["dow_sin"], out["dow_cos"] = np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)
    return out


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def run_deepar(df: Any, freq: str, cuts: list[int], steps: int, val: int, seed: int = 0) -> dict[str, Any]:
    import pandas as pd
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.model.deepar import DeepAREstimator

    series = {u: g["y"].to_numpy() for u, g in df.groupby("unique_id", sort=False)}
    start = pd.Period(df["ds"].iloc[0], freq=freq)
    rows = lambda stop: [{"start": start, "target": y[:stop], "item_id": u} for u, y in series.items()]  # noqa: E731
    # GluonTS scores the last `prediction_length` rows of each validation entry: one entry per
    # validation window, so that its checkpoint is chosen on the validation rows ours stops on
    train = ListDataset(rows(cuts[0] - val), freq=freq)
    valid = ListDataset([e for k in range(max(1, val // H)) for e in rows(cuts[0] - k * H)], freq=freq)
    per_epoch = 50
    est = DeepAREstimator(
        freq=freq,
        prediction_length=H,
        num_layers=2,
        hidden_size=40,
        lr=1e-3,
        batch_size=32,
        num_batches_per_epoch=per_epoch,
        trainer_kwargs={
            "max_epochs": max(1, math.ceil(steps / per_epoch)),
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "default_root_dir": tempfile.mkdtemp(prefix="deepar-"),  # its checkpoint, not in the repository
        },
    )
    torch_seed(seed)
    t0 = time.perf_counter()
    predictor = est.train(train, validation_data=valid)  # its best checkpoint on the validation loss
    train_s = time.perf_counter() - t0
    samples, predict_s = [], []
    for cut in cuts:
        ds = ListDataset([{"start": start, "target": y[:cut], "item_id": u} for u, y in series.items()], freq=freq)
        t0 = time.perf_counter()
        fcs = list(predictor.predict(ds, num_samples=100))
        predict_s.append(time.perf_counter() - t0)
        samples.append(np.stack([f.samples for f in fcs], axis=1))  # (100, series, H)
    return {
        "samples": np.concatenate(samples, axis=1),
        "train_s": train_s,
        "predict_s": float(np.median(predict_s)),
        "optimizer_steps": max(1, math.ceil(steps / per_epoch)) * per_epoch,
        "sample_once": lambda: list(predictor.predict(ds, num_samples=100)),  # the last window, 100 paths
    }


def run_stats(df: Any, freq: str, cuts: list[int], season: int, rows: int) -> dict[str, dict[str, Any]]:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, SeasonalNaive

    pos = df.groupby("unique_id", sort=False).cumcount().to_numpy()
    tail = df[pos >= cuts[0] - rows]
    sf = StatsForecast(
        models=[SeasonalNaive(season_length=season), AutoETS(season_length=min(season, 24))], freq=freq, n_jobs=1
    )
    t0 = time.perf_counter()
    cv = sf.cross_validation(df=tail, h=H, n_windows=len(cuts), step_size=H, level=list(LEVELS), refit=False)
    seconds = time.perf_counter() - t0
    ids = list(df["unique_id"].unique())
    cv = cv.reset_index() if "unique_id" not in cv.columns else cv
    cv["unique_id"] = cv["unique_id"].astype(str)
    cv["_order"] = cv["unique_id"].map({str(u): i for i, u in enumerate(ids)})
    cv = cv.sort_values(["cutoff", "_order", "ds"])  # window-major, series in our order
    out = {}
    for name in ("SeasonalNaive", "AutoETS"):
        get = lambda col: cv[col].to_numpy().reshape(len(cuts) * len(ids), H)  # noqa: E731
        lo = {v: get(f"{name}-lo-{v}") for v in LEVELS}
        hi = {v: get(f"{name}-hi-{v}") for v in LEVELS}
        qs = np.stack([lo[80], lo[60], lo[40], lo[20], get(name), hi[20], hi[40], hi[60], hi[80]])
        out[name] = {"quantiles": (qs, lo, hi), "train_s": seconds, "truth": get("y")}
    return out


def bench(name: str, args: argparse.Namespace, stats: bool = True) -> list[dict[str, Any]]:
    df, freq, season = load(name)
    n = int(df.groupby("unique_id").size().min())
    cuts = windows(n)
    if args.quick:
        cuts = cuts[-2:]
    ids = list(df["unique_id"].unique())
    series = {u: g["y"].to_numpy() for u, g in df.groupby("unique_id", sort=False)}
    y = np.stack([series[u][c : c + H] for c in cuts for u in ids])  # (windows * series, H), window-major
    histories = [series[u][:c] for c in cuts for u in ids]
    scores = Scores(y, histories, season)
    print(
        f"\n{name}: {len(ids)} series x {n} rows, freq {freq}, {len(cuts)} windows of {H}, seed {args.seed}", flush=True
    )
    rows = []
    val = args.val if args.val is not None else len(cuts) * H  # validation rows: as many as the test span
    ours = run_hiddenstate(df, freq, cuts, season, val, args)
    print(
        f"  hiddenstate done: {ours['epochs']} epochs (best {ours['best_epoch']}), {ours['optimizer_steps']} steps "
        f"of {ours['chunk']} rows in {ours['train_s']:.0f}s"
        + (f", weights averaged (ema {args.ema})" if args.ema else "")
        + f"; validation CRPS {ours['val_crps']:.4f} at spread 1"
        + (
            f", {ours['val_best']:.4f} at the calibrated spread {ours['spread']:.3f} ({ours['calib_s']:.1f}s)"
            if args.calibrate
            else ""
        ),
        flush=True,
    )
    if not args.no_deepar:
        # the same number of series-steps through the loss: DeepAR's windows are 32 x (48 context + 48 ahead)
        deepar = run_deepar(df, freq, cuts, math.ceil(ours["sample_steps"] / (32 * 2 * H)), val, args.seed)
        print(f"  deepar done: {deepar['optimizer_steps']} steps in {deepar['train_s']:.0f}s", flush=True)
        interleaved(ours, deepar, args.rounds)
    if ours["raw_samples"] is None:
        rows.append({"model": "hiddenstate", **scores.row(*from_samples(ours["samples"])), **_times(ours)})
    else:  # the model's own spread first, then the same random numbers at the calibrated spread
        rows.append({"model": "hiddenstate", **scores.row(*from_samples(ours["raw_samples"])), **_times(ours)})
        rows.append({"model": "hiddenstate, calibrated", **scores.row(*from_samples(ours["samples"]))})
    if not args.no_deepar:
        rows.append({"model": "deepar (gluonts)", **scores.row(*from_samples(deepar["samples"])), **_times(deepar)})
    if stats and not args.no_stats:
        for model, res in run_stats(df, freq, cuts, season, args.stats_rows).items():
            assert np.allclose(res["truth"], y), "statsforecast windows do not line up with ours"
            rows.append({"model": model, **scores.row(*res["quantiles"]), "train_s": res["train_s"]})
    # each neural model's paths (ours at its own spread), for the breakdown and the figure
    neural = {"hiddenstate": ours["raw_samples"] if ours["raw_samples"] is not None else ours["samples"]}
    if not args.no_deepar:
        neural["DeepAR (GluonTS)"] = deepar["samples"]
    print(breakdown(neural, y, ids), flush=True)
    if args.plot is not None:
        out = plot_last_window(args.plot / f"{name}-seed{args.seed}.png", name, ids, series, cuts[-1], neural)
        print(f"  wrote {out}", flush=True)
    for r in rows:
        r["dataset"] = name
        r["seed"] = args.seed if r["model"] in NEURAL else None
    return rows


def breakdown(neural: dict[str, np.ndarray], y: np.ndarray, ids: list[Any]) -> str:
    """Where each neural model's CRPS comes from: per series, and per third of the horizon
    (normalized as the table's: over that part's sum of ``|y|``). ``y`` is window-major."""
    k = len(ids)
    thirds = [(a, a + H // 3) for a in range(0, H, H // 3)]  # H = 48: 1-16, 17-32, 33-48
    lines = []
    for model, samples in neural.items():
        per_series = [metrics.crps(samples[:, i::k], y[i::k], normalize=True) for i in range(k)]
        per_third = [metrics.crps(samples[:, :, a:b], y[:, a:b], normalize=True) for a, b in thirds]
        lines.append(
            f"  {model} CRPS by series: "
            + ", ".join(f"{u} {v:.3f}" for u, v in zip(ids, per_series, strict=True))
            + "; by step: "
            + ", ".join(f"{a + 1}-{b} {v:.3f}" for (a, b), v in zip(thirds, per_third, strict=True))
        )
    return "\n".join(lines)


def plot_last_window(
    path: Path, name: str, ids: list[Any], series: dict[Any, np.ndarray], cut: int, paths: dict[str, np.ndarray]
) -> Path:
    """The last test window of each series: one row of panels per series, one column per neural
    model (its 50% and 90% intervals over the 100 paths, the median, the truth, two days before)."""
    from matplotlib.figure import Figure

    from hiddenstate.metrics import central_interval
    from hiddenstate.plots import FORECAST_COLOR, TRUTH_COLOR, save_png, shade_intervals

    fig = Figure(figsize=(5.5 * len(paths), 1.9 * len(ids) + 0.8))
    axes = fig.subplots(len(ids), len(paths), squeeze=False, sharex=True, sharey="row")
    before, ahead = np.arange(-2 * H + 1, 1), np.arange(1, H + 1)
    for i, uid in enumerate(ids):
        y = series[uid]
        for j, (model, samples) in enumerate(paths.items()):
            ax = axes[i, j]
            window = samples[:, len(samples[0]) - len(ids) + i]  # the last window: (100, H)
            shade_intervals(ax, ahead, {v: tuple(np.quantile(window, central_interval(v), axis=0)) for v in (50, 90)})
            ax.plot(ahead, np.median(window, axis=0), color=FORECAST_COLOR, lw=1.3, label="median")
            ax.plot(before, y[cut - 2 * H : cut], color=TRUTH_COLOR, lw=0.9, alpha=0.6)
            ax.plot(ahead, y[cut : cut + H], color=TRUTH_COLOR, lw=1.3, label="truth")
            ax.grid(alpha=0.25)
            if i == 0:
                ax.set_title(model, loc="left", fontsize=10)
            if j == 0:
                ax.set_ylabel(str(uid), fontsize=9)
    axes[0, -1].legend(loc="upper left", fontsize=7, frameon=False, ncol=4)
    fig.suptitle(f"{name}: the last test window, 100 paths each", x=0.01, ha="left", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.6 / fig.get_figheight(), bottom=0.3 / fig.get_figheight())
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path)


NEURAL = ("hiddenstate", "hiddenstate, calibrated", "deepar (gluonts)")


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and neural model, the mean of every figure over the seeds (``seed`` "mean of N")."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for model in NEURAL:
            runs = [r for r in rows if r["dataset"] == ds and r["model"] == model]
            if runs:
                keys = [k for k, v in runs[0].items() if isinstance(v, float) and all(k in r for r in runs)]
                mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
                out.append({"dataset": ds, "model": model, "seed": f"mean of {len(runs)}", **mean})
    return out


def paired(rows: list[dict[str, Any]]) -> str:
    """Per dataset, ours against DeepAR seed by seed: the CRPS pairs, how often ours is at or below,
    and the mean difference with its paired standard error."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        by = {(r["model"], r["seed"]): r for r in rows if r["dataset"] == ds and isinstance(r.get("seed"), int)}
        seeds = sorted(s for m, s in by if m == "hiddenstate" and ("deepar (gluonts)", s) in by)
        if len(seeds) < 2:
            continue
        ours = np.array([by[("hiddenstate", s)]["CRPS"] for s in seeds])
        peer = np.array([by[("deepar (gluonts)", s)]["CRPS"] for s in seeds])
        d = ours - peer
        pairs = ", ".join(f"{s}: {a:.3f}/{b:.3f}" for s, a, b in zip(seeds, ours, peer, strict=True))
        out.append(
            f"{ds}: CRPS ours/deepar by seed ({pairs}); ours at or below on {int((d <= 0).sum())} of {len(seeds)}; "
            f"mean {ours.mean():.4f} vs {peer.mean():.4f}, difference {d.mean():+.4f} "
            f"+- {d.std(ddof=1) / np.sqrt(len(d)):.4f} (paired standard error)"
        )
    return "\n".join(out)


def interleaved(ours: dict[str, Any], peer: dict[str, Any], rounds: int) -> None:
    """Time 100 paths of one window of every series, ours and the peer's in turn, ``rounds``
    times: both see the same machine, so the ratio of the medians is what to read. The medians
    replace the per-window timings (taken minutes apart, under whatever else ran then)."""
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(rounds):
        for key, res in (("ours", ours), ("peer", peer)):
            t0 = time.perf_counter()
            res["sample_once"]()
            times[key].append(time.perf_counter() - t0)
    ours["predict_window_s"], peer["predict_window_s"] = ours["predict_s"], peer["predict_s"]
    ours["predict_s"], peer["predict_s"] = float(np.median(times["ours"])), float(np.median(times["peer"]))
    print(
        f"  sampling, 100 paths, {rounds} interleaved rounds: ours {ours['predict_s'] * 1e3:.0f} ms, "
        f"deepar {peer['predict_s'] * 1e3:.0f} ms (per-window medians during the runs: "
        f"{ours['predict_window_s'] * 1e3:.0f} ms, {peer['predict_window_s'] * 1e3:.0f} ms)",
        flush=True,
    )


def _times(res: dict[str, Any]) -> dict[str, float]:
    keys = ("train_s", "predict_s", "update_s", "repredict_s", "advance_s", "optimizer_steps", "epochs")
    return {k: float(res[k]) for k in keys if k in res}


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "dataset",
        "model",
        *(["seed"] if any(r.get("seed") is not None for r in rows) else []),
        "CRPS",
        "wQL",
        "MASE",
        "MSIS",
        "cov80",
        "cov90",
        "train_s",
        "predict_s",
        "update_s",
        "repredict_s",
        "advance_s",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("")
            elif isinstance(v, str | int):
                cells.append(str(v))
            else:
                cells.append(f"{v:.3f}" if c in ("CRPS", "wQL", "cov80", "cov90", "advance_s") else f"{v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        by = {r["model"]: r for r in rows if r["dataset"] == ds}
        ours, peer = by.get("hiddenstate"), by.get("deepar (gluonts)")
        parts = [f"{ds}:"]
        if ours and peer:
            parts.append(f"CRPS ours/deepar {ours['CRPS'] / peer['CRPS']:.2f}")
            parts.append(f"wQL ours/deepar {ours['wQL'] / peer['wQL']:.2f}")
            parts.append(f"sampling deepar/ours {peer['predict_s'] / ours['predict_s']:.1f}x")
        if ours:
            parts.append(
                f"re-predict/update-then-predict {ours['repredict_s'] / ours['update_s']:.1f}x "
                f"({ours['repredict_s'] * 1e3:.0f} / {ours['update_s'] * 1e3:.1f} ms; "
                f"update alone {ours['advance_s'] * 1e3:.1f} ms)"
            )
            parts.append(f"cov80 {ours['cov80']:.3f}")
        out.append("  ".join(parts))
    return "\n".join(out)


def cpu_name() -> str:
    """The processor's model name (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="etth1,ettm1,taylor")
    parser.add_argument("--epochs", type=int, default=40, help="hiddenstate's most epochs (early stopping ends sooner)")
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better val loss before stopping")
    parser.add_argument("--lr", type=float, default=3e-3, help="hiddenstate's learning rate (Adam)")
    parser.add_argument("--decay", type=float, default=0.9, help="hiddenstate's lr factor per epoch (1: constant)")
    parser.add_argument(
        "--ema",
        type=float,
        default=0.995,
        help="hiddenstate's moving average of the weights, the decay per step (0: none; chosen on validation)",
    )
    parser.add_argument("--val", type=int, default=None, help="validation rows per series (default: the test span)")
    parser.add_argument(
        "--lags", default="auto", help="target lags: auto (1-7 and 14 seasons), gluonts (DeepAR's), none, or a list"
    )
    parser.add_argument("--seed", type=int, default=0, help="hiddenstate's and DeepAR's seed")
    parser.add_argument(
        "--seeds", default="", help="several seeds in one run, e.g. 0,1,2: a row per seed, their means, pairs"
    )
    parser.add_argument("--dropout", type=float, default=0.0, help="hiddenstate's dropout between its layers")
    parser.add_argument(
        "--calibrate", action="store_true", help="also fit the spread on the validation windows (a second row)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=9,
        help="interleaved timings: sampling (ours and DeepAR), update-then-predict and re-predict",
    )
    parser.add_argument(
        "--lanes", type=int, default=0, help="hiddenstate lanes (0: one per series, each read whole as at inference)"
    )
    parser.add_argument(
        "--no-calendar", dest="calendar", action="store_false", help="no hour/weekday covariates for hiddenstate"
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="hiddenstate truncated-BPTT chunk length (0: two days, at most 96)"
    )
    parser.add_argument("--stats-rows", type=int, default=2000, help="rows before the first window for statsforecast")
    parser.add_argument("--quick", action="store_true", help="the last two windows only")
    parser.add_argument(
        "--plot", type=Path, default=None, help="a folder: a PNG of each dataset's last test window, per model"
    )
    parser.add_argument(
        "--static", default="none", help="hiddenstate's static input per series: none, logscale or id (one-hot)"
    )
    parser.add_argument("--no-deepar", action="store_true")
    parser.add_argument("--no-stats", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    load_avg = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()}, {os.cpu_count()} cores "
        f"({cpu_name()}; torch's CPU kernels: {torch.backends.cpu.get_cpu_capability()}), "
        f"torch {torch.__version__}, load average {load_avg[0]:.1f}"
    )  # the kernels' width changes float rounding, so a training run reproduces on the same kind of CPU only
    rows = []
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    for name in args.datasets.split(","):
        if name != "taylor" and not ETT.exists():
            print(f"skipping {name}: {ETT} not found (set HIDDENSTATE_ETT)")
            continue
        for k, seed in enumerate(seeds):  # statsforecast is deterministic: once
            args.seed = seed
            rows += bench(name, args, stats=k == 0)
    if len(seeds) > 1:
        means = mean_rows(rows)
        rows += means
        print("\n" + table(rows) + "\n\n" + ratios(means) + "\n\n" + paired(rows))
    else:
        print("\n" + table(rows) + "\n\n" + ratios(rows))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

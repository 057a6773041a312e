"""Forecaster: the long-format DataFrame API, its columns, the carried state and its errors."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

import hiddenstate as hs
from hiddenstate.errors import ConfigError, DataError

pd = pytest.importorskip("pandas", reason="pandas is the data extra")

N, H = 160, 6


def _frame(n: int = N, ids: tuple[str, ...] = ("a", "b", "c")) -> pd.DataFrame:
    """The first ``n`` rows of each series (the same values whatever ``n``)."""
    whole = _make(ids)
    return whole[whole.groupby("unique_id").cumcount() < n].reset_index(drop=True)


def _make(ids: tuple[str, ...], n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=n, freq="h")
    parts = []
    for k, uid in enumerate(ids):
        hour = 2 * np.pi * np.arange(n) / 24
        y = (10 + 5 * k) * (1 + 0.3 * np.sin(hour)) + rng.normal(0, 1, n)
        parts.append(
            pd.DataFrame({"unique_id": uid, "ds": ds, "y": y, "hour": np.sin(hour), "temp": rng.normal(0, 1, n)})
        )
    return pd.concat(parts, ignore_index=True)


STATIC = pd.DataFrame({"unique_id": ["a", "b", "c"], "size": [1.0, 2.0, 3.0]})


def _forecaster(**kw) -> hs.Forecaster:
    cfg = hs.TrainConfig(epochs=2, lr=1e-2, progress=False, device="cpu")
    args = dict(horizon=H, freq="h", futr_exog=["hour"], hist_exog=["temp"], stat_exog=["size"], config=cfg, steps=24)
    return hs.Forecaster(model=[hs.LSTM(8)], **(args | kw))


@pytest.fixture(scope="module")
def fitted() -> hs.Forecaster:
    return _forecaster().fit(_frame(), static_df=STATIC)


def _future(df: pd.DataFrame, start: int, h: int = H) -> pd.DataFrame:
    """The exogenous rows of steps start .. start+h-1 of every series (taken from a longer frame)."""
    pos = df.groupby("unique_id").cumcount()
    return df[(pos >= start) & (pos < start + h)][["unique_id", "ds", "hour"]]


FULL = _frame(N + 40)


def test_predict_columns_follow_neuralforecast(fitted) -> None:
    out = fitted.predict(futr_df=_future(FULL, N), seed=0)
    name = "HiddenState"
    assert list(out.columns) == [
        "unique_id", "ds", name, f"{name}-median", f"{name}-lo-90", f"{name}-lo-80", f"{name}-hi-80", f"{name}-hi-90",
    ]  # fmt: skip
    assert len(out) == 3 * H and out["unique_id"].tolist() == ["a"] * H + ["b"] * H + ["c"] * H
    assert out["ds"].iloc[0] == pd.Timestamp("2024-01-01") + pd.Timedelta(hours=N)
    assert (out[f"{name}-lo-90"] <= out[f"{name}-lo-80"]).all() and (out[f"{name}-hi-80"] <= out[f"{name}-hi-90"]).all()
    one = fitted.predict(futr_df=_future(FULL, N), level=[50], seed=0)
    assert list(one.columns)[2:] == [name, f"{name}-median", f"{name}-lo-50", f"{name}-hi-50"]
    q = fitted.predict(futr_df=_future(FULL, N), quantiles=[0.1, 0.5, 0.9], seed=0)
    assert list(q.columns)[2:] == [name, f"{name}-ql0.1", f"{name}-ql0.5", f"{name}-ql0.9"]
    np.testing.assert_array_equal(q[f"{name}-ql0.5"], out[f"{name}-median"])  # the same seeded paths
    np.testing.assert_array_equal(q[name], out[name])


def test_sample_columns_and_values_are_the_paths_of_predict(fitted) -> None:
    s = fitted.sample(n_paths=20, seed=3, futr_df=_future(FULL, N))
    assert list(s.columns) == ["unique_id", "ds", "sample_id", "HiddenState"]
    assert len(s) == 20 * 3 * H and sorted(s["sample_id"].unique()) == list(range(20))
    mean = s.groupby(["unique_id", "ds"], sort=False)["HiddenState"].mean().to_numpy()
    p = fitted.predict(futr_df=_future(FULL, N), seed=3, num_samples=20)
    np.testing.assert_allclose(mean, p["HiddenState"].to_numpy(), rtol=1e-12)


LAGS = pytest.mark.parametrize("lags", [(), (2, 5, 30), (3, 200)], ids=["no-lags", "lags", "lag-past-start"])


@LAGS
def test_update_then_predict_equals_a_state_over_the_full_history(lags) -> None:
    """Lags shorter than the horizon read draws, longer ones the stored tail; 200 > the series'
    160 rows pads the tail with the first value, as the recomputation from the start does."""
    fc = _forecaster(lags=lags).fit(_frame(), static_df=STATIC)
    more = FULL[FULL.groupby("unique_id").cumcount() >= N]
    pos = more.groupby("unique_id").cumcount()
    fc.update(more[pos < 1])  # one new row per series
    fc.update(more[(pos >= 1) & (pos < 25)])  # then 24 more
    fc.update(more[(pos >= 25) & (pos < 30) & (more["unique_id"] != "c")])  # 5 more, two series only
    c_long = FULL[(FULL.groupby("unique_id").cumcount() < N + 30) & (FULL["unique_id"] != "c")]
    c_short = FULL[(FULL.groupby("unique_id").cumcount() < N + 25) & (FULL["unique_id"] == "c")]
    history = pd.concat([c_long, c_short])
    futr = pd.concat(
        [_future(FULL, N + 30)[lambda d: d.unique_id != "c"], _future(FULL, N + 25)[lambda d: d.unique_id == "c"]]
    )
    after = fc.predict(futr_df=futr, seed=11)
    again = fc.predict(df=history, futr_df=futr, seed=11)
    np.testing.assert_allclose(after["HiddenState"], again["HiddenState"], rtol=0, atol=1e-5)
    pd.testing.assert_frame_equal(after, again, check_exact=True)  # seeded paths: bitwise


@LAGS
def test_rolling_cross_validation_equals_independent_windows(lags) -> None:
    fc = _forecaster(lags=lags)
    df = _frame(N + 20)
    cv = fc.cross_validation(df, n_windows=3, step_size=7, static_df=STATIC, seed=5)
    assert list(cv.columns) == [
        "unique_id", "ds", "cutoff", "HiddenState", "HiddenState-median",
        "HiddenState-lo-90", "HiddenState-lo-80", "HiddenState-hi-80", "HiddenState-hi-90", "y",
    ]  # fmt: skip
    assert len(cv) == 3 * 3 * H
    pos = df.groupby("unique_id").cumcount()
    first = N + 20 - H - 2 * 7
    for k in range(3):
        cut = first + 7 * k
        window = cv[cv["cutoff"] == pd.Timestamp("2024-01-01") + pd.Timedelta(hours=cut - 1)].reset_index(drop=True)
        alone = fc.predict(df=df[pos < cut], futr_df=df, seed=5)  # the state over the window's history, from scratch
        pd.testing.assert_frame_equal(window.drop(columns=["cutoff", "y"]), alone, check_exact=True)
        np.testing.assert_array_equal(window["y"], df[(pos >= cut) & (pos < cut + H)]["y"])


def test_save_and_load_keep_every_series_state(fitted, tmp_path) -> None:
    fitted.save(tmp_path / "fc")
    assert sorted(p.name for p in (tmp_path / "fc").iterdir()) == [
        "lane_state.safetensors", "manifest.json", "model.safetensors",
    ]  # fmt: skip
    back = hs.Forecaster.load(tmp_path / "fc")
    futr = _future(FULL, N)
    pd.testing.assert_frame_equal(back.predict(futr_df=futr, seed=1), fitted.predict(futr_df=futr, seed=1))
    with pytest.raises(ConfigError, match="not a saved Forecaster"):
        m = hs.SequenceModel(1, 1, [hs.LSTM(4)])
        hs.save_run(tmp_path / "plain", m, scaler=None, inputs=["y"], targets=["y"])
        hs.Forecaster.load(tmp_path / "plain")


def test_lags_are_the_target_values_lag_steps_back_over_the_scale() -> None:
    """Row t reads y[t] and y[t + 1 - lag] for each lag (the value `lag` steps before the one it
    predicts), padded with the first value before the series starts; update continues them
    from the stored tail."""
    fc = hs.Forecaster([hs.LSTM(4)], horizon=2, freq="h", lags=[3, 2], config=hs.TrainConfig(epochs=1, progress=False))
    assert fc.lags == [2, 3] and fc.input_columns == ["y", "y-lag2", "y-lag3"]
    assert fc.model.input_size == 3
    y = np.arange(1.0, 11.0)
    df = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=10, freq="h"), "y": y})
    fc.fit(df)
    scale = fc._series["a"]["scale"]
    assert scale == pytest.approx(5.5)
    x = fc.features.inputs(fc._read(df, "df", ["y"])["a"], fc._series["a"], 10) * scale
    np.testing.assert_allclose(x[:, 0], y)
    np.testing.assert_allclose(x[:, 1], [1, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # y[t - 1]
    np.testing.assert_allclose(x[:, 2], [1, 1, 1, 2, 3, 4, 5, 6, 7, 8])  # y[t - 2]
    np.testing.assert_allclose(fc._series["a"]["tail"], [8, 9, 10])
    ds = pd.date_range("2024-01-01 10:00", periods=2, freq="h")
    more = pd.DataFrame({"unique_id": "a", "ds": ds, "y": [11.0, 12.0]})
    fc.update(more)
    np.testing.assert_allclose(fc._series["a"]["tail"], [10, 11, 12])


def test_bad_lags_fail_in_one_line() -> None:
    for bad, msg in [((1,), "int >= 2"), ((2, 2), "names a lag twice"), ((2.5,), "int >= 2"), ((True,), "int >= 2")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            hs.Forecaster(lags=bad)


def test_a_saved_forecaster_keeps_its_lags_and_tails(tmp_path) -> None:
    fc = _forecaster(lags=(2, 30)).fit(_frame(), static_df=STATIC)
    fc.save(tmp_path / "fc")
    back = hs.Forecaster.load(tmp_path / "fc")
    assert back.lags == [2, 30]
    futr = _future(FULL, N)
    pd.testing.assert_frame_equal(back.predict(futr_df=futr, seed=4), fc.predict(futr_df=futr, seed=4))
    manifest = tmp_path / "fc" / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["extra"]["forecaster"]["series"][0]["tail"] = [1.0]
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="stored tail does not match the lags"):
        hs.Forecaster.load(tmp_path / "fc")


def test_integer_timestamps_and_column_overrides() -> None:
    df = pd.DataFrame(
        {
            "sid": np.repeat([7, 8], 50),
            "t": np.tile(np.arange(50), 2),
            "v": np.abs(np.random.default_rng(1).normal(5, 1, 100)),
        }
    )
    cfg = hs.TrainConfig(epochs=1, progress=False, device="cpu")
    fc = hs.Forecaster([hs.GRU(4)], 3, 1, "normal", id_col="sid", time_col="t", target_col="v", config=cfg, alias="m")
    out = fc.fit(df).predict(seed=0)
    assert list(out.columns) == ["sid", "t", "m", "m-median", "m-lo-90", "m-lo-80", "m-hi-80", "m-hi-90"]
    assert out["t"].tolist() == [50, 51, 52] * 2 and out["sid"].tolist() == [7] * 3 + [8] * 3


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_forecast_stamps_keep_the_unit_of_ds_and_reach_past_2262(unit, tmp_path) -> None:
    """A fixed-duration freq steps in the stamps' own unit: the forecast's ds has the input's dtype,
    and stamps past 2262 (out of reach of nanoseconds) are not wrapped around. A saved and loaded
    forecaster keeps the unit too (the stored stamp is text, which parses to another resolution)."""
    start = "2024-01-01" if unit == "ns" else "2300-01-01"
    df = pd.DataFrame({"unique_id": "a", "ds": pd.date_range(start, periods=30, freq="15min", unit=unit),
                       "y": np.arange(30.0) % 7 + 1})  # fmt: skip
    cfg = hs.TrainConfig(epochs=1, progress=False, device="cpu")
    fc = hs.Forecaster([hs.LSTM(4)], 3, "15min", config=cfg, steps=8).fit(df)
    out = fc.predict(seed=0)
    assert out["ds"].dtype == df["ds"].dtype
    assert out["ds"].tolist() == pd.date_range(df["ds"].iloc[-1], periods=4, freq="15min")[1:].tolist()
    fc.save(tmp_path / "fc")
    pd.testing.assert_frame_equal(hs.Forecaster.load(tmp_path / "fc").predict(seed=0), out, check_exact=True)
    cv = fc.cross_validation(df, n_windows=2, seed=0)
    assert cv["ds"].dtype == cv["cutoff"].dtype == df["ds"].dtype


def _bad(message: str, fn, *args, **kw) -> None:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_bad_input_fails_in_one_line_naming_the_series_or_column(fitted) -> None:
    df = _frame(40)
    fc = _forecaster()
    _bad("df: missing column 'temp'", fc.fit, df.drop(columns=["temp"]), static_df=STATIC)
    swapped = df.copy()
    swapped.loc[[3, 4], "ds"] = swapped.loc[[4, 3], "ds"].to_numpy()
    _bad(
        "df: series 'a': timestamps not sorted (2024-01-01 03:00:00 after 2024-01-01 04:00:00)", fc.fit, swapped, STATIC
    )
    dup = df.copy()
    dup.loc[4, "ds"] = dup.loc[3, "ds"]
    _bad("df: series 'a': duplicated timestamp 2024-01-01 03:00:00", fc.fit, dup, STATIC)
    gap = df.drop(index=45)  # series 'b', 2024-01-01 05:00
    _bad(
        "df: series 'b': gap in freq 'h' after 2024-01-01 04:00:00: "
        "next is 2024-01-01 06:00:00, expected 2024-01-01 05:00:00",
        fc.fit, gap, STATIC,
    )  # fmt: skip
    nan = df.copy()
    nan.loc[81, "y"] = np.nan
    _bad("df: series 'c': column 'y' is missing at 2024-01-01 01:00:00", fc.fit, nan, STATIC)
    _bad("static_df: no row for series 'c'", fc.fit, df, STATIC.iloc[:2])
    # predict
    unknown = _frame(40, ids=("a", "z"))
    _bad("predict: unknown series 'z'; the forecaster was fitted on 3 series", fitted.predict, df=unknown, futr_df=FULL)
    _bad(
        "futr_df: series 'b' lacks future exogenous rows for 2 of the 6 steps "
        "2024-01-07 16:00:00 .. 2024-01-07 21:00:00 (first missing: 2024-01-07 20:00:00)",
        fitted.predict, futr_df=_future(FULL, N)[lambda d: ~((d.unique_id == "b") & (d.ds >= "2024-01-07 20:00"))],
    )  # fmt: skip
    _bad("futr_df: needed for the future exogenous columns ['hour']", fitted.predict)
    _bad("futr_df: missing column 'hour'", fitted.predict, futr_df=_future(FULL, N).drop(columns=["hour"]))
    # update
    late = FULL[FULL.groupby("unique_id").cumcount() == N + 1]
    _bad("df_new: series 'a': new rows must start at 2024-01-07 16:00:00, got 2024-01-07 17:00:00", fitted.update, late)
    _bad("update: unknown series 'z'; the forecaster was fitted on 3 series", fitted.update, unknown)


def test_missing_ids_stamps_and_numeric_stamps_fail_by_name() -> None:
    """A row without a series id is not dropped (as groupby would), a missing stamp is not a
    'gap', and numbers in ds with a calendar freq are not read as nanoseconds since 1970."""
    fc = _forecaster()
    df = _frame(40).astype({"unique_id": object})
    last_of_a = df.copy()
    last_of_a.loc[39, "unique_id"] = None
    _bad("df: column 'unique_id' is missing in 1 of 120 rows (the first: row 39)", fc.fit, last_of_a, STATIC)
    nat = df.copy()
    nat.loc[45, "ds"] = pd.NaT
    _bad("df: series 'b': column 'ds' is missing after 2024-01-01 04:00:00", fc.fit, nat, STATIC)
    numeric = df.assign(ds=df.groupby("unique_id").cumcount())
    _bad("df: column 'ds' holds numbers, not timestamps; integer stamps take an int freq", fc.fit, numeric, STATIC)
    with pytest.raises(
        ConfigError, match=re.escape("freq: expected a pandas frequency string or a positive int, got None")
    ):
        hs.Forecaster(freq=None)


def test_local_stamps_across_a_dst_change_are_named_and_the_fix_given_works() -> None:
    """ISO strings with their UTC offsets (+01:00, then +02:00) are timestamps, not junk: the
    message says so and how to give them one zone, and the frame so converted fits."""
    ds = pd.date_range("2024-03-30 20:00", periods=30, freq="h", tz="Europe/Berlin")
    df = pd.DataFrame({"unique_id": "a", "ds": [t.isoformat() for t in ds], "y": np.arange(30.0) % 5 + 1})
    fc = hs.Forecaster([hs.LSTM(4)], 3, "h", config=hs.TrainConfig(epochs=1, progress=False, device="cpu"), steps=8)
    _bad(
        "df: column 'ds' holds stamps with different UTC offsets; give them one time zone: "
        "pd.to_datetime(df['ds'], utc=True).dt.tz_convert(<its IANA zone>)",
        fc.fit, df,
    )  # fmt: skip
    df["ds"] = pd.to_datetime(df["ds"], utc=True).dt.tz_convert("Europe/Berlin")
    assert fc.fit(df).predict(seed=0)["ds"].tolist() == list(pd.date_range(ds[-1], periods=4, freq="h")[1:])


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="Forecaster forecasts distributions"):
        hs.Forecaster(likelihood=None)
    with pytest.raises(ConfigError, match=re.escape("freq: 'every hour' is not a pandas frequency")):
        hs.Forecaster(freq="every hour")
    for old, new in (("M", "ME"), ("H", "h")):  # pandas 3's own hint for the spellings it dropped
        message = (
            f"freq: {old!r} is not a pandas frequency (e.g. 'h', '15min', 'D') or an int; pandas says to use {new!r}"
        )
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            hs.Forecaster(freq=old)
    with pytest.raises(ConfigError, match="not fitted"):
        hs.Forecaster().predict()


def test_a_failed_update_leaves_every_state_as_it_was(fitted) -> None:
    futr = _future(FULL, N)
    before = fitted.predict(futr_df=futr, seed=2)
    more = FULL[FULL.groupby("unique_id").cumcount() == N]
    bad = pd.concat(
        [more[more.unique_id == "a"], FULL[(FULL.unique_id == "b") & (FULL.groupby("unique_id").cumcount() == N + 3)]]
    )
    with pytest.raises(DataError, match="series 'b': new rows must start at"):
        fitted.update(bad)  # 'a' is fine, 'b' skips rows: nothing changes
    pd.testing.assert_frame_equal(fitted.predict(futr_df=futr, seed=2), before, check_exact=True)


def test_a_deep_copy_carries_its_own_states(fitted) -> None:
    """copy.deepcopy of a fitted forecaster (a what-if branch): updating the copy leaves the
    original's states, and so its forecasts, as they were."""
    futr = _future(FULL, N)
    before = fitted.predict(futr_df=futr, seed=3)
    branch = copy.deepcopy(fitted)
    pd.testing.assert_frame_equal(branch.predict(futr_df=futr, seed=3), before, check_exact=True)
    branch.update(FULL[FULL.groupby("unique_id").cumcount() == N])
    moved = branch.predict(futr_df=_future(FULL, N + 1), seed=3)
    assert not np.allclose(moved["HiddenState"], before["HiddenState"])
    pd.testing.assert_frame_equal(fitted.predict(futr_df=futr, seed=3), before, check_exact=True)


def test_val_size_holds_out_the_tail_for_the_validation_loss() -> None:
    from hiddenstate.data.lanes import StatefulBatches
    from hiddenstate.data.scaled import ScaledBatches

    fc = _forecaster(config=hs.TrainConfig(epochs=2, progress=False, device="cpu", patience=5))
    fc.fit(_frame(), static_df=STATIC, val_size=24)
    # the scoring mask keeps only targets at rows >= score_from of each series
    sb = StatefulBatches([np.zeros((10, 1))], [np.zeros((10, 1))], batch_size=1, steps=4, split=False)
    masks = [b.mask[0].tolist() for b in ScaledBatches(sb, np.ones((1, 1)), score_from=[7])]
    # chunk 0: x rows 1..4, targets 2..5; chunk 1: x rows 5..8, targets 6..9
    assert masks == [[False] * 4, [False, True, True, True]]


@pytest.mark.slow
def test_probabilistic_benchmark_runs(capsys, tmp_path) -> None:
    pytest.importorskip("pmdarima", reason="the taylor series ships with pmdarima (bench extra)")
    from benchmarks import probabilistic

    args = ["--datasets", "taylor", "--quick", "--epochs", "1", "--no-deepar", "--no-stats", "--plot", str(tmp_path)]
    probabilistic.main(args)
    out = capsys.readouterr().out
    assert "| taylor | hiddenstate |" in out and "re-predict/update-then-predict" in out
    assert (tmp_path / "taylor-seed0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_future_rows_are_found_in_a_longer_futr_df(fitted) -> None:
    """The forecast reads the rows of its own steps from a futr_df that holds more (the whole
    frame, rows before and after the span), and names what is missing at either end."""
    span = _future(FULL, N)
    expected = fitted.predict(futr_df=span, seed=3)
    pd.testing.assert_frame_equal(fitted.predict(futr_df=FULL, seed=3), expected)
    other = span.copy()
    other.loc[other.unique_id == "b", "hour"] += 1.0  # the values read are those of the right rows
    assert not np.allclose(fitted.predict(futr_df=other, seed=3)["HiddenState"], expected["HiddenState"])
    steps = "of the 6 steps 2024-01-07 16:00:00 .. 2024-01-07 21:00:00 (first missing: "
    early = FULL[FULL.groupby("unique_id").cumcount() < N + 2]  # each series ends 2 steps into the span
    _bad(
        f"futr_df: series 'a' lacks future exogenous rows for 4 {steps}2024-01-07 18:00:00)",
        fitted.predict,
        futr_df=early,
    )
    late = FULL[FULL.groupby("unique_id").cumcount() > N]  # each series starts one step late
    _bad(
        f"futr_df: series 'a' lacks future exogenous rows for 1 {steps}2024-01-07 16:00:00)",
        fitted.predict,
        futr_df=late,
    )
    no_c = span[span.unique_id != "c"]
    _bad(
        f"futr_df: series 'c' lacks future exogenous rows for 6 {steps}2024-01-07 16:00:00)",
        fitted.predict,
        futr_df=no_c,
    )


def test_futr_df_is_looked_up_by_stamp_whatever_its_order_and_other_rows(fitted) -> None:
    """futr_df is read for the forecast's own steps only: its rows may come in any order, and a
    gap or a missing value outside those steps is not the forecast's business; inside them it is
    named as the steps it leaves without covariates."""
    span = _future(FULL, N)
    expected = fitted.predict(futr_df=span, seed=3)
    pd.testing.assert_frame_equal(fitted.predict(futr_df=span.sample(frac=1, random_state=0), seed=3), expected)
    pos = FULL.groupby("unique_id").cumcount()
    holes = FULL[(pos != N + 8) & (pos != 3)].copy()  # gaps after the span and before it
    holes.loc[holes.groupby("unique_id").cumcount() == N + 10, "hour"] = np.nan
    pd.testing.assert_frame_equal(fitted.predict(futr_df=holes, seed=3), expected)
    steps = "of the 6 steps 2024-01-07 16:00:00 .. 2024-01-07 21:00:00 (first missing: "
    inside = span.drop(span.index[span.unique_id == "b"][2])
    _bad(f"futr_df: series 'b' lacks future exogenous rows for 1 {steps}2024-01-07 18:00:00)", fitted.predict,
         futr_df=inside)  # fmt: skip
    nan = span.copy()
    nan.loc[nan.index[nan.unique_id == "c"][4], "hour"] = np.nan
    _bad("futr_df: series 'c': column 'hour' is missing at 2024-01-07 20:00:00", fitted.predict, futr_df=nan)


def _two_layer(**kw) -> hs.Forecaster:
    cfg = hs.TrainConfig(epochs=1, lr=1e-2, progress=False, device="cpu")
    return hs.Forecaster(model=[hs.LSTM(16), hs.LSTM(16)], horizon=H, freq="h", config=cfg, steps=24, **kw)


def test_update_equals_the_full_history_bitwise_when_read_in_the_same_batches() -> None:
    """Two layers: a BLAS product's rounding depends on how many rows it multiplies, so the
    promise is bitwise when update and the recomputation batch the series alike (equal lengths,
    the same new rows for every series), as in the benchmark."""
    df = _make(("a", "b", "c"))[["unique_id", "ds", "y"]]
    pos = df.groupby("unique_id").cumcount()
    fc = _two_layer().fit(df[pos < N])
    fc.update(df[(pos >= N) & (pos < N + 1)])
    fc.update(df[(pos >= N + 1) & (pos < N + 8)])
    pd.testing.assert_frame_equal(fc.predict(seed=2), fc.predict(df=df[pos < N + 8], seed=2), check_exact=True)


def test_update_equals_the_full_history_to_rounding_when_batched_otherwise() -> None:
    """Series of different lengths, updated apart: the states agree to float32 rounding, and so
    do the seeded paths (not bit for bit: the batches differ), well inside the 1e-5 of the mean."""
    df = _make(("a", "b", "c"))[["unique_id", "ds", "y"]]
    pos = df.groupby("unique_id").cumcount()
    n = df["unique_id"].map({"a": N, "b": N + 10, "c": N - 30})
    fc = _two_layer().fit(df[pos < n])
    fc.update(df[(pos >= n) & (pos < n + 3) & (df["unique_id"] != "b")])
    after = fc.predict(seed=4)
    again = fc.predict(df=df[pos < n + 3 * (df["unique_id"] != "b")], seed=4)
    cols = [c for c in after.columns if c.startswith("HiddenState")]
    np.testing.assert_allclose(after[cols].to_numpy(), again[cols].to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after["HiddenState"], again["HiddenState"], rtol=0, atol=1e-5)

"""Forecaster: what a refused call says, and that it leaves the forecaster and its saves as they were."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import hiddenstate as hs
import hiddenstate.forecaster as forecaster_module
from hiddenstate.errors import ConfigError, DataError, ShapeError

pd = pytest.importorskip("pandas", reason="pandas is the data extra")

H = 4
CFG = dict(epochs=2, lr=1e-2, progress=False, device="cpu")


def _counts(n: int = 80, ids: tuple[str, ...] = ("a", "b")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=n, freq="h")
    parts = [pd.DataFrame({"unique_id": u, "ds": ds, "y": rng.poisson(5 + 3 * k, n) * 1.0}) for k, u in enumerate(ids)]
    return pd.concat(parts, ignore_index=True)


def _fc(**kw) -> hs.Forecaster:
    args = dict(model=[hs.LSTM(4)], horizon=H, freq="h", config=hs.TrainConfig(**CFG), steps=16, batch_size=2)
    return hs.Forecaster(**(args | kw))


def _weights(fc: hs.Forecaster) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in fc.model.state_dict().items()}


def _one_line(exc: pytest.ExceptionInfo, message: str) -> None:
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_negative_counts_are_refused_before_any_weight_or_state_moves() -> None:
    df = _counts()
    fc = _fc(likelihood="negbin").fit(df)
    before, weights = fc.predict(seed=0), _weights(fc)
    neg = df.copy()
    neg.loc[(neg.unique_id == "b") & (neg.ds == "2024-01-03 10:00"), "y"] = -5.0
    message = (
        "df: series 'b': column 'y' is -5 at 2024-01-03 10:00:00; likelihood 'negbin' models counts, which are >= 0"
    )
    with pytest.raises(DataError) as e:
        fc.fit(neg)
    _one_line(e, message)
    new = _counts(81)[lambda d: d.ds == d.ds.max()].assign(y=[3.0, -1.0])
    with pytest.raises(DataError, match=re.escape("df_new: series 'b': column 'y' is -1 at 2024-01-04 08:00:00")):
        fc.update(new)
    with pytest.raises(DataError, match=re.escape("df: series 'b': column 'y' is -5 at 2024-01-03 10:00:00")):
        fc.predict(df=neg)
    for k, v in fc.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    pd.testing.assert_frame_equal(fc.predict(seed=0), before, check_exact=True)
    # the same rows with their counts fine are taken
    fc.update(new.assign(y=[3.0, 1.0]))
    assert fc.predict(seed=0)["ds"].iloc[0] == pd.Timestamp("2024-01-04 09:00")


class _Interrupted(hs.Trainer):
    """A training that moves the weights, then is stopped (Ctrl-C) before it returns."""

    def fit(self, *args, **kw):
        super().fit(*args, **kw)
        raise KeyboardInterrupt


def test_an_interrupted_refit_restores_the_weights_states_and_eval_mode(monkeypatch) -> None:
    model = hs.SequenceModel(1, 1, [hs.LSTM(4), hs.LSTM(4)], likelihood="studentt", dropout=0.5)
    fc = _fc(model=model).fit(_counts())
    before, weights, history = fc.predict(seed=0), _weights(fc), fc.history_
    monkeypatch.setattr(forecaster_module, "Trainer", _Interrupted)
    with pytest.raises(KeyboardInterrupt):
        fc.fit(_counts(90))
    assert not fc.model.training  # dropout off: forecasts stay seeded
    for k, v in fc.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert fc.history_ is history
    pd.testing.assert_frame_equal(fc.predict(seed=0), before, check_exact=True)


def test_the_interruption_does_move_the_weights_it_is_restored_from(monkeypatch) -> None:
    """Guards the test above: without the restore, the interrupted training would have changed them."""
    fc = _fc().fit(_counts())
    weights = _weights(fc)
    moved = {}

    class Spy(_Interrupted):
        def fit(self, *args, **kw):
            try:
                super().fit(*args, **kw)
            finally:
                moved.update({k: v.clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(forecaster_module, "Trainer", Spy)
    with pytest.raises(KeyboardInterrupt):
        fc.fit(_counts(90))
    assert any(not torch.equal(moved[k], weights[k]) for k in weights)


def test_a_refused_save_leaves_the_save_before_it_intact(tmp_path) -> None:
    good = _fc().fit(_counts())
    good.save(tmp_path / "fc")
    before = good.predict(seed=1)
    stamps = _counts().assign(unique_id=lambda d: d.unique_id.map({"a": pd.Timestamp(0), "b": pd.Timestamp(1)}))
    odd = _fc().fit(stamps)
    with pytest.raises(ConfigError) as e:
        odd.save(tmp_path / "fc")
    _one_line(e, "save: series id Timestamp('1970-01-01 00:00:00') cannot be saved; ids must be str, int or float")
    pd.testing.assert_frame_equal(hs.Forecaster.load(tmp_path / "fc").predict(seed=1), before, check_exact=True)


def test_save_run_builds_every_byte_before_it_touches_the_directory(tmp_path) -> None:
    model = hs.SequenceModel(1, 1, [hs.LSTM(4)])
    hs.save_run(tmp_path / "run", model, scaler=None, inputs=["y"], targets=["y"])
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    other = hs.SequenceModel(1, 1, [hs.LSTM(4)])
    with pytest.raises(TypeError, match="not JSON serializable"):
        hs.save_run(tmp_path / "run", other, scaler=None, inputs=["y"], targets=["y"], extra={"x": object()})
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == files
    back = hs.load_run(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v)


def test_an_offset_freq_is_saved_as_its_string(tmp_path) -> None:
    fc = _fc(freq=pd.offsets.Hour()).fit(_counts())
    assert fc.freq == "h"
    fc.save(tmp_path / "fc")
    back = hs.Forecaster.load(tmp_path / "fc")
    pd.testing.assert_frame_equal(back.predict(seed=2), fc.predict(seed=2), check_exact=True)


def test_time_zones_survive_save_and_load_across_a_dst_change(tmp_path) -> None:
    df = _counts(72)
    shift = pd.Timestamp("2023-03-24") - pd.Timestamp("2024-01-01")  # to 2023-03-24 .. 26 23:00 UTC
    df["ds"] = pd.DatetimeIndex(df["ds"] + shift).tz_localize("UTC").tz_convert("Europe/Berlin")  # CEST from 26 01:00
    fc = _fc().fit(df)
    fc.save(tmp_path / "fc")
    back = hs.Forecaster.load(tmp_path / "fc")
    out, got = fc.predict(seed=3), back.predict(seed=3)
    pd.testing.assert_frame_equal(got, out, check_exact=True)
    assert str(got["ds"].dt.tz) == "Europe/Berlin" and got["ds"].iloc[0].utcoffset() == pd.Timedelta(hours=2)
    nxt = pd.Timestamp("2023-03-27 00:00", tz="UTC").tz_convert("Europe/Berlin")
    back.update(pd.DataFrame({"unique_id": ["a", "b"], "ds": [nxt, nxt], "y": [4.0, 6.0]}))
    fc.update(pd.DataFrame({"unique_id": ["a", "b"], "ds": [nxt, nxt], "y": [4.0, 6.0]}))
    pd.testing.assert_frame_equal(back.predict(seed=3), fc.predict(seed=3), check_exact=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "fc"
    _fc(hist_exog=["temp"]).fit(_counts().assign(temp=0.5)).save(path)
    return path


def _edited(saved, tmp_path, edit):
    import shutil

    path = tmp_path / "edited"
    shutil.copytree(saved, path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest["extra"]["forecaster"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["series"].pop(), "manifest.json: 1 series entries for 2 stored states"),
        (lambda m: m["series"].append(dict(m["series"][0])), "manifest.json: 3 series entries for 2 stored states"),
        (lambda m: m["series"][1].update(id="a"), "manifest.json: series entry 1: series 'a' is stored twice"),
        (lambda m: m["series"][1].update(id=["b"]), "series entry 1: id ['b'] is not a str, int or float"),
        (lambda m: m["series"][0].update(scale=float("nan")), "series 'a': scale must be finite and > 0, got nan"),
        (lambda m: m["series"][0].update(scale=0), "series 'a': scale must be finite and > 0, got 0.0"),
        (lambda m: m["series"][0].update(hist=[1.0, 2.0]), "series 'a': 2 hist values for the columns ['temp']"),
        (lambda m: m["series"][0].update(ds="yesterday"), "series 'a': ds 'yesterday' is not a stored stamp"),
        (lambda m: m["series"][0].pop("y"), "series entry 0: expected an object with id, scale, y, hist, stat, ds"),
        (lambda m: m.pop("horizon"), "manifest.json: the forecaster entry lacks ['horizon']"),
        (lambda m: m.update(ds_unit="hours"), "manifest.json: ds_unit 'hours' is not one of s, ms, us, ns"),
        (
            lambda m: m["series"][0].update(ds="2024-01-04T07:00:00.0000005"),  # half a microsecond: ds is in us
            "series 'a': ds '2024-01-04T07:00:00.0000005' does not fit ds_unit 'us'",
        ),
    ],
)
def test_a_hand_edited_manifest_is_refused_by_name(saved, tmp_path, edit, message) -> None:
    with pytest.raises(ConfigError) as e:
        hs.Forecaster.load(_edited(saved, tmp_path, edit))
    assert str(e.value).startswith(str(tmp_path / "edited")) and str(e.value).endswith(message)


def test_the_unedited_copy_loads(saved, tmp_path) -> None:
    """Guards the test above: the copy and rewrite themselves leave a loadable forecaster."""
    assert hs.Forecaster.load(_edited(saved, tmp_path, lambda m: None))._ids == ["a", "b"]


def test_predict_arguments() -> None:
    fc = _fc().fit(_counts())
    with pytest.raises(ConfigError, match="give level or quantiles, not both"):
        fc.predict(level=[80], quantiles=[0.1, 0.9])
    with pytest.raises(ConfigError, match=re.escape("level must hold whole numbers in (0, 100), got [80.5]")):
        fc.predict(level=[80.5])
    assert "HiddenState-lo-80" in fc.predict(level=[80.0], seed=0).columns
    with pytest.raises(ConfigError, match="num_samples must be an int >= 1, got 0"):
        fc.predict(num_samples=0)
    with pytest.raises(ConfigError, match="seed must be an int or None, got 'x'"):
        fc.predict(seed="x")
    pd.testing.assert_frame_equal(fc.predict(seed=np.int64(4), h=np.int64(2)), fc.predict(seed=4, h=2))
    with pytest.raises(ConfigError, match=re.escape("h must be an int >= 1, got 2.0")):
        fc.predict(h=2.0)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(level=[150]), "level must hold whole numbers in (0, 100), got [150]"),
        (dict(quantiles=[1.5]), "quantiles must be numbers in (0, 1), got [1.5]"),
        (dict(quantiles=["a"]), "quantiles must be numbers in (0, 1), got ['a']"),
        (dict(level=[80], quantiles=[0.5]), "give level or quantiles, not both: quantiles replace the level columns"),
        (dict(seed="x"), "seed must be an int or None, got 'x'"),
        (dict(h=0, step_size=1), "h must be an int >= 1, got 0"),
        (dict(step_size=1.5), "step_size must be an int >= 1, got 1.5"),
        (dict(n_windows=True), "n_windows must be an int >= 1, got True"),
    ],
)
def test_cross_validation_arguments_are_refused_before_the_first_fit(kw, message) -> None:
    """cross_validation refits: a bad argument found only by the first window's predict would
    leave the forecaster refitted on the rows before it."""
    df = _counts()
    fc = _fc().fit(df)
    before, weights = fc.predict(seed=0), _weights(fc)
    with pytest.raises(ConfigError) as e:
        fc.cross_validation(df, **({"n_windows": 2} | kw))
    _one_line(e, message)
    for k, v in fc.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    pd.testing.assert_frame_equal(fc.predict(seed=0), before, check_exact=True)


def test_a_passed_model_sets_the_likelihood() -> None:
    normal = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal")
    assert hs.Forecaster(model=normal).likelihood == "normal"
    assert hs.Forecaster(model=normal, likelihood="normal").likelihood == "normal"
    with pytest.raises(ConfigError, match="likelihood 'negbin' differs from the model's own head, 'normal'"):
        hs.Forecaster(model=normal, likelihood="negbin")
    assert hs.Forecaster().likelihood == "studentt"


def test_bad_frames_are_named_by_series_and_column() -> None:
    df = _counts(40).assign(size_=0.0)
    fc = _fc(stat_exog=["size"])
    static = pd.DataFrame({"unique_id": ["a", "b"], "size": [1.0, 2.0]})
    cases = [
        (static.assign(size=[1.0, np.nan]), "static_df: series 'b': column 'size' is missing or not finite"),
        (static.assign(size=["big", "small"]), "static_df: series 'a': column 'size' is not a number: 'big'"),
        (pd.concat([static, static.iloc[:1]]), "static_df: series 'a' has more than one row"),
    ]
    for bad, message in cases:
        with pytest.raises(DataError) as e:
            fc.fit(df, static_df=bad)
        _one_line(e, message)
    text = df.astype({"y": object})
    text.loc[45, "y"] = "n/a"
    with pytest.raises(DataError) as e:
        _fc().fit(text)
    _one_line(e, "df: series 'b': column 'y' does not hold numbers ('n/a' at 2024-01-01 05:00:00)")
    inf = df.copy()
    inf.loc[3, "y"] = np.inf
    with pytest.raises(DataError) as e:
        _fc().fit(inf)
    _one_line(e, "df: series 'a': column 'y' is not finite (inf) at 2024-01-01 03:00:00")
    weekly = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=12, freq="W-MON"), "y": 1.0})
    with pytest.raises(DataError) as e:
        _fc(freq="W").fit(weekly)
    _one_line(
        e, "df: series 'a': first timestamp 2024-01-01 00:00:00 is not on freq 'W' (its next stamp on that freq is "
        "2024-01-07 00:00:00)",
    )  # fmt: skip


def test_scaled_metrics_name_a_history_of_other_series() -> None:
    y, past = np.ones((3, 4)), np.arange(20.0).reshape(2, 10)
    with pytest.raises(ShapeError, match=re.escape("insample: its series shape (2,)")):
        hs.metrics.mase(y, y, past)
    with pytest.raises(ShapeError, match=re.escape("does not match y's (3,)")):
        hs.metrics.msis(y, y, y, past)


def test_a_silent_series_takes_the_other_series_mean_scale() -> None:
    df = _counts(60, ids=("a", "b", "z"))
    df.loc[df.unique_id == "z", "y"] = 0.0
    fc = _fc().fit(df)
    a, b = (float(df[df.unique_id == u]["y"].abs().mean()) for u in ("a", "b"))
    assert fc._series["z"]["scale"] == pytest.approx((a + b) / 2, rel=1e-12)
    assert fc._series["a"]["scale"] == pytest.approx(a, rel=1e-12)
    out = fc.predict(seed=0)
    assert np.isfinite(out.filter(like="HiddenState").to_numpy()).all()

"""Spread calibration: the factor on every step's scale parameter, fitted on held-out windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate import metrics
from hiddenstate.calibration import COARSE, search_spread
from hiddenstate.errors import ConfigError, DataError

pd = pytest.importorskip("pandas", reason="pandas is the data extra")

H = 6


def _iid(n: int = 400, ids: str = "ab", sigma: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=n, freq="h")
    return pd.concat([pd.DataFrame({"unique_id": u, "ds": ds, "y": 10 + rng.normal(0, sigma, n)}) for u in ids])


def _fixed_head(fc: hs.Forecaster, sigma: float) -> None:
    """The model's head ignores the state: every step is N(10, sigma) in the series' units
    (both series have a scale near 10, the first one's is used)."""
    scale = fc._series["a"]["scale"]
    with torch.no_grad():
        fc.model.head.weight.zero_()
        fc.model.head.bias[0] = 10 / scale
        fc.model.head.bias[1] = float(np.log(np.expm1(sigma / scale)))  # softplus^-1


@pytest.fixture(scope="module")
def normal_fc() -> hs.Forecaster:
    fc = hs.Forecaster(
        [hs.LSTM(8)], horizon=H, freq="h", likelihood="normal", config=hs.TrainConfig(epochs=1, progress=False)
    )
    return fc.fit(_iid())


# -- sample_paths(spread=...) ---------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["normal", "studentt"])
def test_spread_scales_each_draw_about_its_location(likelihood: str) -> None:
    torch.manual_seed(0)
    m = hs.SequenceModel(2, 1, [hs.LSTM(4)], likelihood=likelihood)
    state = hs.State.zeros(m.state_spec, 3)
    last = torch.randn(3, 2)
    draw = lambda c: hs.sample_paths(m, state, last, 1, 50, seed=7, target_index=[0], spread=c)  # noqa: E731
    one, two, three = draw(1.0), draw(2.0), draw(3.0)
    assert torch.equal(one, hs.sample_paths(m, state, last, 1, 50, seed=7, target_index=[0]))  # 1 is the model's own
    assert not torch.allclose(one, two)
    # one step: loc + c * z, so the draws move linearly in c with the same random numbers
    torch.testing.assert_close(three - two, two - one, rtol=1e-5, atol=1e-5)


def test_spread_acts_through_the_fed_back_draws() -> None:
    """Later steps read the widened draws: their spread is not the first step's factor times
    the unwidened paths' spread around the same centre."""
    torch.manual_seed(1)
    m = hs.SequenceModel(1, 1, [hs.LSTM(8)], likelihood="normal")
    state = hs.State.zeros(m.state_spec, 2)
    p1, p2 = (hs.sample_paths(m, state, torch.ones(2, 1), 4, 20, seed=3, spread=c) for c in (1.0, 2.0))
    # the first step is linear in the factor; a later step is not (the widened draws went back in)
    p3 = hs.sample_paths(m, state, torch.ones(2, 1), 4, 20, seed=3, spread=3.0)
    torch.testing.assert_close(p3[:, :, 0] - p2[:, :, 0], p2[:, :, 0] - p1[:, :, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(p3[:, :, 3] - p2[:, :, 3], p2[:, :, 3] - p1[:, :, 3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_spread_fails_in_one_line(bad) -> None:
    m = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal")
    with pytest.raises(ConfigError, match=r"^spread must be a finite number > 0, got"):
        hs.sample_paths(m, hs.State.zeros(m.state_spec, 1), torch.zeros(1, 1), 2, 3, spread=bad)


def test_negbin_has_no_spread() -> None:
    m = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="negbin")
    state = hs.State.zeros(m.state_spec, 1)
    hs.sample_paths(m, state, torch.zeros(1, 1), 2, 3, spread=1.0)
    with pytest.raises(ConfigError, match="likelihood 'negbin' has no scale parameter to widen"):
        hs.sample_paths(m, state, torch.zeros(1, 1), 2, 3, spread=2.0)


# -- the search -------------------------------------------------------------------------------------


def test_search_spread_finds_the_minimum_of_a_smooth_score() -> None:
    for target in (0.3, 0.8, 1.0, 1.7, 3.5):
        best, info = search_spread(lambda c, t=target: (np.log(c) - np.log(t)) ** 2)
        assert abs(np.log(best / target)) <= np.log(2) / 16 + 1e-12  # half a fine step
        assert info["spreads"][: len(COARSE)] == list(COARSE) and len(info["spreads"]) == len(info["scores"]) == 15
    best, info = search_spread(lambda c: abs(c - 1.3), grid=[1.0, 1.25, 1.5])
    assert best == 1.25 and info["spreads"] == [1.0, 1.25, 1.5]


def test_search_spread_refuses_a_bad_grid_or_score() -> None:
    with pytest.raises(ConfigError, match="grid: expected finite factors > 0"):
        search_spread(lambda c: c, grid=[1.0, 0.0])
    with pytest.raises(ConfigError, match=r"the score at spread 0.25 is nan"):
        search_spread(lambda c: float("nan"))


# -- Forecaster.calibrate ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_calibrate_recovers_the_factor_the_model_is_off_by(normal_fc, sigma: float) -> None:
    """The data is N(10, 1); a model that says N(10, sigma) needs the factor 1 / sigma."""
    _fixed_head(normal_fc, sigma)
    normal_fc.calibrate(_iid(), n_windows=20)
    assert abs(np.log(normal_fc.spread_ * sigma)) < np.log(1.15), normal_fc.calibration_
    assert normal_fc.calibration_["windows"] == 20


def test_calibrate_scores_the_paths_sample_would_draw_window_by_window() -> None:
    """With one factor, the score is the CRPS of ``sample(seed=k)`` from a forecaster fitted on
    the rows before the first window and updated over each window, summed: the windows, their
    covariates and the carried state (lags included) line up with the public API."""
    rng = np.random.default_rng(1)
    n, ids = 200, ("a", "b")
    ds = pd.date_range("2024-01-01", periods=n, freq="h")
    hour = np.sin(2 * np.pi * np.arange(n) / 24)
    df = pd.concat(
        [
            pd.DataFrame({"unique_id": u, "ds": ds, "y": (10 + 3 * k) * (1 + 0.3 * hour) + rng.normal(0, 1, n)})
            for k, u in enumerate(ids)
        ]
    ).assign(hour=np.tile(hour, len(ids)))
    fc = hs.Forecaster([hs.LSTM(8)], horizon=H, freq="h", futr_exog=["hour"], lags=[3, 24],
                       config=hs.TrainConfig(epochs=1, progress=False, seed=0))  # fmt: skip
    pos = df.groupby("unique_id").cumcount().to_numpy()
    first = n - 3 * H
    fc.fit(df[pos < first])
    fc.calibrate(df, n_windows=3, grid=[1.3], seed=5)
    fc.spread_ = 1.3
    total = 0.0
    for k in range(3):
        a = first + k * H
        if k:
            fc.update(df[(pos >= a - H) & (pos < a)])
        s = fc.sample(n_paths=100, seed=5 + k, futr_df=df[(pos >= a) & (pos < a + H)])
        paths = s["HiddenState"].to_numpy().reshape(100, 2, H)
        y = df[(pos >= a) & (pos < a + H)]["y"].to_numpy().reshape(2, H)
        total += metrics.crps(paths, y) * y.size
    assert fc.calibration_["scores"] == [pytest.approx(total, rel=1e-9)]


def test_predict_uses_the_fitted_spread(normal_fc) -> None:
    _fixed_head(normal_fc, 1.0)
    normal_fc.spread_ = 1.0
    one = normal_fc.predict(h=1, seed=0)
    normal_fc.spread_ = 2.5
    wide = normal_fc.predict(h=1, seed=0)
    for side in ("lo", "hi"):
        for level in (80, 90):
            col = f"HiddenState-{side}-{level}"
            width, base = wide[col] - wide["HiddenState"], one[col] - one["HiddenState"]
            np.testing.assert_allclose(width, 2.5 * base, rtol=1e-5)
    normal_fc.spread_ = 1.0


def test_fit_with_calibrate_uses_the_validation_rows_and_a_refit_resets_it(tmp_path) -> None:
    df = _iid(300)
    fc = hs.Forecaster([hs.LSTM(8)], horizon=H, freq="h", likelihood="normal",
                       config=hs.TrainConfig(epochs=2, progress=False, seed=0, patience=5))  # fmt: skip
    fc.fit(df, val_size=4 * H, calibrate=True)
    assert fc.calibration_["windows"] == 4 and fc.spread_ in fc.calibration_["spreads"]
    assert fc.spread_ == fc.calibration_["spreads"][int(np.argmin(fc.calibration_["scores"]))]
    # the same search by hand: the rows before the validation span are what calibrate carries over
    again = hs.Forecaster.load(fc.save(tmp_path / "run"))
    assert again.spread_ == fc.spread_
    pd.testing.assert_frame_equal(again.predict(seed=1), fc.predict(seed=1), check_exact=True)
    scores = list(fc.calibration_["scores"])
    again.calibrate(df, n_windows=4)
    assert again.calibration_["scores"] == pytest.approx(scores, rel=1e-9)
    fc.fit(df, val_size=4 * H)
    assert fc.spread_ == 1.0 and fc.calibration_ is None


def test_calibration_bad_input_fails_in_one_line(normal_fc, tmp_path) -> None:
    fc = hs.Forecaster([hs.LSTM(4)], horizon=H, freq="h", config=hs.TrainConfig(epochs=1, progress=False))
    msg = r"calibrate: needs val_size >= horizon \(6\) validation rows per series, got 5"
    with pytest.raises(ConfigError, match=msg):
        fc.fit(_iid(), val_size=5, calibrate=True)
    neg = hs.Forecaster([hs.LSTM(4)], horizon=H, freq="h", likelihood="negbin",
                        config=hs.TrainConfig(epochs=1, progress=False))  # fmt: skip
    with pytest.raises(ConfigError, match="calibrate: likelihood 'negbin' has no scale parameter to widen"):
        neg.fit(_iid(), val_size=12, calibrate=True)
    with pytest.raises(DataError, match=r"^df: series 'a' has 10 rows, too few for 2 windows of 6$"):
        normal_fc.calibrate(_iid(10), n_windows=2)
    with pytest.raises(DataError, match=r"^calibrate: unknown series 'z'"):
        normal_fc.calibrate(_iid(ids="az"), n_windows=2)
    with pytest.raises(ConfigError, match="n_windows must be an int >= 1, got 0"):
        normal_fc.calibrate(_iid(), n_windows=0)
    with pytest.raises(ConfigError, match="seed must be an int"):
        normal_fc.calibrate(_iid(), seed=None)
    before = normal_fc.spread_
    with pytest.raises(DataError, match=r"^df: series 'a' has 10 rows, too few for 2 windows of 6$"):
        normal_fc.calibrate(_iid(10), n_windows=2)
    assert normal_fc.spread_ == before  # a refused calibration changes nothing
    # a stored spread that is not a factor is refused on load
    import json

    meta_file = normal_fc.save(tmp_path / "run") / "manifest.json"
    meta = json.loads(meta_file.read_text())
    meta["extra"]["forecaster"]["spread"] = -1.0
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"the stored forecaster's spread must be a finite number > 0, got -1\.0"):
        hs.Forecaster.load(tmp_path / "run")

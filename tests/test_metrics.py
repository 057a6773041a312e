"""hiddenstate.metrics against properscoring, utilsforecast and values worked by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

import hiddenstate as hs
from hiddenstate import metrics
from hiddenstate.errors import ConfigError, ShapeError

properscoring = pytest.importorskip("properscoring", reason="properscoring is in the dev extra")
pd = pytest.importorskip("pandas", reason="pandas is in the data extra")
losses = pytest.importorskip("utilsforecast.losses", reason="utilsforecast is in the dev extra")

rng = np.random.default_rng(0)
Y = rng.gamma(2.0, 5.0, size=(3, 24))  # 3 series x 24 steps
SAMPLES = Y + rng.normal(0, 3, size=(200, 3, 24))
PAST = rng.gamma(2.0, 5.0, size=(3, 100))


def _frame(**cols: np.ndarray) -> pd.DataFrame:
    ids = np.repeat(["a", "b", "c"], Y.shape[1])
    return pd.DataFrame(
        {"unique_id": ids, "ds": np.tile(np.arange(Y.shape[1]), 3), "y": Y.ravel()}
        | {k: v.ravel() for k, v in cols.items()}
    )


def test_hs_metrics_is_the_module_and_point_metrics_stay() -> None:
    assert hs.metrics is metrics
    assert metrics.point(np.array([1.0, 3.0]), np.array([1.0, 1.0]))["mse"] == 2.0


def test_crps_equals_properscoring() -> None:
    want = properscoring.crps_ensemble(Y, np.moveaxis(SAMPLES, 0, -1)).mean()
    assert metrics.crps(SAMPLES, Y) == pytest.approx(want, rel=1e-12)
    normed = properscoring.crps_ensemble(Y, np.moveaxis(SAMPLES, 0, -1)).sum() / np.abs(Y).sum()
    assert metrics.crps(SAMPLES, Y, normalize=True) == pytest.approx(normed, rel=1e-12)
    signed = Y - 12.0  # values of both signs: the normaliser is sum |y|, not sum y
    assert (signed < 0).any() and (signed > 0).any()
    normed = properscoring.crps_ensemble(signed, np.moveaxis(SAMPLES - 12.0, 0, -1)).sum() / np.abs(signed).sum()
    assert metrics.crps(SAMPLES - 12.0, signed, normalize=True) == pytest.approx(normed, rel=1e-12)


def test_weighted_quantile_loss_equals_utilsforecast_scaled_crps_per_series() -> None:
    q = np.array(metrics.QUANTILES)
    qp = np.quantile(SAMPLES, q, axis=0)  # (9, 3, 24)
    cols = {f"m-q{int(v * 100)}": qp[i] for i, v in enumerate(q)}
    got = losses.scaled_crps(_frame(**cols), {"m": list(cols)}, q)
    for k, uid in enumerate("abc"):  # utilsforecast: one value per series; ours on that series alone
        want = float(got.loc[got.unique_id == uid, "m"].iloc[0])
        assert metrics.weighted_quantile_loss(qp[:, k], Y[k]) == pytest.approx(want, rel=1e-9)


def test_weighted_quantile_loss_by_hand() -> None:
    y = np.array([10.0, 0.0])
    qp = np.array([[8.0, 1.0], [12.0, 1.0]])  # levels 0.1 and 0.9
    # q=0.1: |(10-8)(0-0.1)| + |(0-1)(1-0.1)| = 0.2 + 0.9;  q=0.9: |(10-12)(1-0.9)| + |(0-1)(1-0.9)| = 0.2 + 0.1
    assert metrics.quantile_losses(qp, y, [0.1, 0.9]) == pytest.approx([2 * 1.1 / 10, 2 * 0.3 / 10])
    assert metrics.weighted_quantile_loss(qp, y, [0.1, 0.9]) == pytest.approx((0.22 + 0.06) / 2)


def test_mase_equals_utilsforecast() -> None:
    pred = np.median(SAMPLES, axis=0)
    train = pd.DataFrame(
        {"unique_id": np.repeat(["a", "b", "c"], 100), "ds": np.tile(np.arange(-100, 0), 3), "y": PAST.ravel()}
    )
    got = losses.mase(_frame(m=pred), ["m"], seasonality=24, train_df=train)
    assert metrics.mase(pred, Y, PAST, season=24) == pytest.approx(float(got["m"].mean()), rel=1e-9)


def test_msis_equals_the_winkler_score_over_the_seasonal_error() -> None:
    lo, hi = np.quantile(SAMPLES, [0.025, 0.975], axis=0)
    got = losses.winkler_score(_frame(**{"m-lo-95": lo, "m-hi-95": hi}), ["m"], level=95)
    scale = np.abs(PAST[:, 24:] - PAST[:, :-24]).mean(axis=1)
    want = np.mean([float(got.loc[got.unique_id == u, "m"].iloc[0]) / scale[k] for k, u in enumerate("abc")])
    assert metrics.msis(lo, hi, Y, PAST, season=24) == pytest.approx(want, rel=1e-9)


def test_coverage_equals_utilsforecast() -> None:
    lo, hi = np.quantile(SAMPLES, [0.1, 0.9], axis=0)
    got = losses.coverage(_frame(**{"m-lo-80": lo, "m-hi-80": hi}), ["m"], level=80)
    assert metrics.coverage(lo, hi, Y) == pytest.approx(float(got["m"].mean()), rel=1e-12)


def test_shape_errors_name_the_argument() -> None:
    with pytest.raises(ShapeError, match=r"samples: expected \(num_samples, \*y.shape\) = \(num_samples, 3, 24\)"):
        metrics.crps(SAMPLES[:, :2], Y)
    with pytest.raises(ShapeError, match=r"q_pred: expected \(len\(quantiles\)=9, \*y.shape=\(3, 24\)\)"):
        metrics.weighted_quantile_loss(SAMPLES[:3], Y)
    with pytest.raises(ShapeError, match=r"hi: expected the shape of y \(3, 24\), got \(3, 23\)"):
        metrics.coverage(Y, Y[:, 1:], Y)


def test_missing_truths_and_levels_outside_0_1_are_refused() -> None:
    y = Y.copy()
    y[1, 3] = np.nan
    lo, hi = np.quantile(SAMPLES, [0.1, 0.9], axis=0)
    for call in (
        lambda: metrics.crps(SAMPLES, y),
        lambda: metrics.coverage(lo, hi, y),  # a NaN truth would count as a miss
        lambda: metrics.mase(np.median(SAMPLES, axis=0), y, PAST),
    ):
        with pytest.raises(ShapeError, match=re.escape("y: 1 values are NaN or inf (the first at index (1, 3))")):
            call()
    with pytest.raises(ConfigError, match=re.escape("quantiles must be numbers in (0, 1), got [0.5, 1.5]")):
        metrics.weighted_quantile_loss(np.stack([lo, hi]), Y, [0.5, 1.5])

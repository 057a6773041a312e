"""Fan charts: the paths' intervals drawn from a Forecaster's frames and in a likelihood run's forecast.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hiddenstate as hs
from hiddenstate.errors import ConfigError, DataError

pd = pytest.importorskip("pandas", reason="pandas is the data extra")
pytest.importorskip("matplotlib", reason="matplotlib is the cli extra")

from matplotlib.collections import PolyCollection  # noqa: E402

from hiddenstate.plots import fan_figure  # noqa: E402

H = 6
PNG = b"\x89PNG\r\n\x1a\n"


def _frame(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=n, freq="h")
    return pd.concat(
        [
            pd.DataFrame(
                {"unique_id": u, "ds": ds, "y": (10 + 5 * k) + np.sin(np.arange(n) / 4) + rng.normal(0, 0.3, n)}
            )
            for k, u in enumerate(("a", "b"))
        ],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def fitted() -> hs.Forecaster:
    cfg = hs.TrainConfig(epochs=2, lr=1e-2, progress=False, device="cpu")
    return hs.Forecaster(model=[hs.LSTM(8)], horizon=H, freq="h", config=cfg, steps=24).fit(_frame())


def _bands(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lower edge, upper edge) of each shaded interval on ``ax``, in drawing order."""
    out = []
    for coll in ax.collections:
        if isinstance(coll, PolyCollection):
            v = coll.get_paths()[0].vertices
            n = (len(v) - 3) // 2  # fill_between: a start, the lower edge forward, the upper one back, closed
            out.append((v[1 : n + 1, 1], v[n + 2 : 2 * n + 2, 1][::-1]))
    return out


def test_fan_figure_shades_each_level_between_its_lo_and_hi_columns(fitted) -> None:
    fcst = fitted.predict(level=[50, 90], seed=0)
    fig = fan_figure(_frame(), fcst, level=[50, 90])
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["a", "b"]
    for ax, uid in zip(axes, ("a", "b"), strict=True):
        f = fcst[fcst["unique_id"] == uid]
        drawn = _bands(ax)
        assert len(drawn) == 2  # the 90% interval first (the lighter), then the 50%
        for (lo, hi), v in zip(drawn, (90, 50), strict=True):
            np.testing.assert_allclose(lo, f[f"HiddenState-lo-{v}"], rtol=1e-12)
            np.testing.assert_allclose(hi, f[f"HiddenState-hi-{v}"], rtol=1e-12)
        lines = {line.get_label(): line for line in ax.get_lines()}
        np.testing.assert_allclose(lines["median"].get_ydata(), f["HiddenState-median"])
        history = np.asarray(lines["history"].get_ydata())
        np.testing.assert_allclose(history, _frame().query("unique_id == @uid")["y"].tail(96))


def test_every_level_in_the_frame_by_default_and_sample_paths_as_lines(fitted, tmp_path: Path) -> None:
    fcst = fitted.predict(seed=0)  # levels 80 and 90
    assert len(_bands(fan_figure(None, fcst).axes[0])) == 2
    samples = fitted.sample(n_paths=4, seed=1)
    ax = fan_figure(None, fcst, samples=samples, ids=["b"]).axes[0]
    paths = [line for line in ax.get_lines() if line.get_alpha() == 0.5]
    assert len(paths) == 4
    first = samples[(samples["unique_id"] == "b") & (samples["sample_id"] == 0)]["HiddenState"]
    np.testing.assert_allclose(paths[0].get_ydata(), first)
    out = fitted.plot(tmp_path / "fan.png", _frame(), n_paths=3, seed=0)
    assert out == tmp_path / "fan.png" and out.read_bytes()[:8] == PNG


def test_cross_validation_frames_draw_every_window_with_its_truth(fitted) -> None:
    cfg = hs.TrainConfig(epochs=1, lr=1e-2, progress=False, device="cpu")
    fc = hs.Forecaster(model=[hs.LSTM(8)], horizon=H, freq="h", config=cfg, steps=24)
    cv = fc.cross_validation(_frame(), n_windows=3, step_size=H, level=[80], seed=0)
    ax = fan_figure(_frame(), cv, ids=["a"]).axes[0]
    drawn = _bands(ax)
    a = cv[cv["unique_id"] == "a"]
    assert len(drawn) == 3
    for (lo, hi), (_, w) in zip(drawn, a.groupby("cutoff"), strict=True):
        np.testing.assert_allclose(lo, w["HiddenState-lo-80"])
        np.testing.assert_allclose(hi, w["HiddenState-hi-80"])
    truths = [line for line in ax.get_lines() if line.get_label() == "truth"]
    assert any(np.allclose(t.get_ydata(), a["y"].iloc[:H]) for t in truths)


def test_bad_frames_fail_in_one_line_naming_the_column_or_series(fitted) -> None:
    fcst = fitted.predict(level=[80], seed=0)
    with pytest.raises(ConfigError, match=r"no HiddenState-lo-50 / HiddenState-hi-50 columns; the levels there are 80"):
        fan_figure(None, fcst, level=[50])
    with pytest.raises(DataError, match=r"ids: series 'zz' is not in forecasts"):
        fan_figure(None, fcst, ids=["a", "zz"])
    with pytest.raises(DataError, match=r"history: no column 'y'"):
        fan_figure(_frame().rename(columns={"y": "load"}), fcst)
    with pytest.raises(DataError, match=r"forecasts: no column 'ds'"):
        fan_figure(None, fcst.drop(columns="ds"))
    with pytest.raises(DataError, match=r"forecasts: expected a DataFrame, got list"):
        fan_figure(None, [1, 2])
    with pytest.raises(ConfigError, match=r"n_paths must be an int >= 0, got -1"):
        fitted.plot("unused.png", n_paths=-1)


# -- the command line's forecast.png of a likelihood run ----------------------------------------


def test_a_likelihood_runs_forecast_png_shades_its_paths_intervals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli import pipeline
    from hiddenstate.cli.commands import app
    from hiddenstate.paths import sample_paths_original

    t = np.arange(300)
    data = tmp_path / "wide.csv"
    pd.DataFrame({"load": 10 + 3 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 0.3, 300)}).to_csv(
        data, index=False
    )
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--hidden", "8", "--steps", "24"]
    args += ["--batch-size", "4", "--horizon", "8", "--likelihood", "studentt"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "forecast.png").read_bytes()[:8] == PNG

    run, settings, dataset = pipeline.load(tmp_path / "run", data, {})
    evaluation = pipeline.evaluate(run, dataset, settings, 8, "auto")
    bands = pipeline.forecast_bands(run, dataset, settings, evaluation)
    assert bands is not None and sorted(bands) == [50, 90]
    # the same intervals from paths drawn at that origin: every row up to it read, the next 8 ahead
    o = int(evaluation.sample["origin"])
    x = dataset.arrays(["load"])[0][: o + 1]
    paths = sample_paths_original(run, x, 8, 200, seed=0)[:, 0]  # (200, 8, 1)
    np.testing.assert_allclose(bands[90][0], np.quantile(paths, 0.05, axis=0))
    np.testing.assert_allclose(bands[50][1], np.quantile(paths, 0.75, axis=0))
    assert (bands[90][0] <= bands[50][0]).all() and (bands[50][1] <= bands[90][1]).all()
    truth = evaluation.sample["truth"]
    np.testing.assert_array_equal(truth, dataset.arrays(["load"])[0][o + 1 : o + 9])

    from hiddenstate.cli.plots import forecast_figure

    s = evaluation.sample
    fig = forecast_figure(s["history"], s["truth"], s["pred"], ["load"], bands=bands)
    drawn = _bands(fig.axes[0])
    np.testing.assert_allclose(drawn[0][0], bands[90][0][:, 0])  # the 90% interval first
    np.testing.assert_allclose(drawn[1][1], bands[50][1][:, 0])


def test_a_point_runs_forecast_png_has_no_intervals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli import pipeline
    from hiddenstate.cli.commands import app

    data = tmp_path / "wide.csv"
    pd.DataFrame({"load": np.sin(np.arange(300) / 4)}).to_csv(data, index=False)
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--hidden", "8", "--steps", "24"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--horizon", "8", "--no-plots"])
    assert result.exit_code == 0, result.output
    run, settings, dataset = pipeline.load(tmp_path / "run", data, {})
    assert pipeline.forecast_bands(run, dataset, settings, pipeline.evaluate(run, dataset, settings, 8, "auto")) is None

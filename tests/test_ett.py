"""The ETT benchmark: windows and their carried context, SegRNN shapes and options, training through
the Trainer, a smoke training run on ETTh1.

The data lives beside the checkout in ``../shared/data/ett`` (never in the repo); tests that need
it skip when it is absent. The full benchmark is behind ``-m slow``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.ett import benchmark as ett
from hiddenstate.ett.windows import ForecastWindows, context_cache, window_starts
from hiddenstate.model import build_model
from hiddenstate.models.segrnn import SegRNN
from hiddenstate.runs.run import load_run

ETT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ett"
needs_ett = pytest.mark.skipif(
    not (ETT_DIR / "ETTh1.csv").exists(), reason=f"ETT data not found at {ETT_DIR} (../shared/data/ett beside the repo)"
)


def _scorer(model: SegRNN) -> hs.Trainer:
    """A Trainer used only to score windows (its evaluate is the benchmark's)."""
    return hs.Trainer(model, hs.TrainConfig(state_policy="batch", progress=False, device="cpu"))


def test_window_counts_of_the_standard_split() -> None:
    # README: L=96, H=96 gives 34,369 / 11,425 / 11,425 windows on ETTm.
    counts = [len(window_starts(*r, 96, 96)) for r in hs.Split.ett("ETTm1", seq_len=96).borders]
    assert counts == [34369, 11425, 11425]


def test_benchmark_takes_its_borders_from_split_ett(tmp_path: Path) -> None:
    weather = tmp_path / "weather.csv"
    weather.write_text("date,a\n2020-01-01,1\n")
    with pytest.raises(hs.ConfigError, match=r"^Split.ett: unknown ETT dataset 'weather.csv'; expected ETTh1"):
        ett.run_one(weather, 96, log=lambda s: None)
    short = tmp_path / "ETTh1.csv"
    rows = "\n".join(f"2020-01-01 {h:02d}:00:00,1,2,3,4,5,6,7" for h in range(24))
    short.write_text("date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n" + rows + "\n")
    with pytest.raises(hs.DataError, match=re.escape("has 24 rows, but the train split ends at row 8640")):
        ett.run_one(short, 96, log=lambda s: None)


def test_windows_hold_the_rows_and_the_carried_context_state() -> None:
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8, context=6)
    data = torch.randn(64, 2)
    windows = ForecastWindows(m, data, (10, 50), batch_size=5, shuffle=True, seed=3, context_grad=2)
    assert windows.starts.tolist() == list(range(10, 39))  # every start has 2 segments before it
    first, again = list(windows), list(windows)  # two epochs: two orders of the same windows
    assert sorted(torch.cat([b.starts for b in first]).tolist()) == windows.starts.tolist()
    assert torch.cat([b.starts for b in first]).tolist() != torch.cat([b.starts for b in again]).tolist()
    windows.set_epoch(0)
    assert [b.starts.tolist() for b in windows] == [b.starts.tolist() for b in first]
    b = first[0]
    for i, s in enumerate(b.starts.tolist()):
        assert torch.equal(b.x[i], data[s - 8 : s + 8])  # 2 segments of 4 rows, then the window
        assert torch.equal(b.y[i], data[s + 8 : s + 12])
        with torch.no_grad():  # the stream from row s % 4, after the whole segments before row s - 8
            want, _ = m.context_states(data[s % 4 : s - 8])
        torch.testing.assert_close(b.state.layers[0].h[2 * i : 2 * i + 2], want[-1])
    assert b.mask.all() and b.mask.shape == (5, 4)


def test_history_rows_in_x_advance_the_context_with_gradients() -> None:
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8, context=6)
    x = torch.randn(3, 16, 2)  # 2 segments of history, then the 8-step window
    y, _ = m(x)
    _, ctx = m.context_states(x[0, :8])
    y0, _ = m(x[:1, 8:], ctx)
    torch.testing.assert_close(y[:1], y0)
    y.sum().backward()
    assert m.ctx_embed[0].weight.grad.abs().sum() > 0
    with pytest.raises(hs.ShapeError, match=r"6 steps before the 8-step window; expected whole segments of seg_len=4"):
        m(torch.randn(1, 14, 2))
    with pytest.raises(hs.ShapeError, match=r"SegRNN x: expected shape \(batch, steps=8, vars=2\), got \(1, 12, 2\)"):
        SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8)(torch.randn(1, 12, 2))


def test_benchmark_trains_through_the_trainer_with_the_segrnn_schedule_and_one_based_best_epoch(
    tmp_path: Path,
) -> None:
    model, train, windows = ett.model_for("ETTm1", 96, "stateful", epochs=7, batch_size=64)
    assert isinstance(train, hs.TrainConfig) and train.state_policy == "batch" and train.loss == "mae"
    assert windows == {"batch_size": 64, "context_grad": 4} and model["context"] == 64
    with pytest.raises(hs.ConfigError, match=r"unknown benchmark option 'widht'"):
        ett.model_for("ETTm1", 96, "fair", widht=3)
    # the lr of SegRNN's "type3": 3 epochs at 1e-3, then x 0.9 per epoch
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8)
    data = torch.randn(200, 2)
    trainer = hs.Trainer(m, train)
    history = trainer.fit(ForecastWindows(m, data, (0, 150), shuffle=True), ForecastWindows(m, data, (140, 200)))
    lrs = [r["lr"] for r in history.rows]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 9e-4, 8.1e-4, 7.29e-4, 6.561e-4][: len(lrs)])
    assert [r["epoch"] for r in history.rows] == list(range(1, len(lrs) + 1))
    val = [r["val_loss"] for r in history.rows]
    assert history.best_epoch == 1 + int(np.argmin(val))  # counted from 1


def test_the_table_sets_ours_beside_segrnns_published_input_96_rows_at_every_horizon() -> None:
    # SegRNN's README reports input 96 at every horizon (ETTh1 H96 MAE 0.395 included)
    result = ett.BenchmarkResult("ETTh1", 192, "fair", 0.9, 0.6, 0.43, 0.428, 1.0, 3, 3, {}, {})
    row = ett.format_table([result]).splitlines()[2]
    assert row.startswith("| ETTh1 | 192 | 0.430/0.428 | 0.900 | 0.408/0.419 | 0.460/0.445 |"), row
    assert ett.PUBLISHED["ETTh1"]["SegRNN"][96] == (0.368, 0.395)


def test_repeat_last_scores_by_hand() -> None:
    data = np.array([[0.0], [1.0], [2.0], [4.0]])
    # windows of input 2, horizon 1 in rows [0, 4): starts 0 and 1; errors 2-1=1 and 4-2=2
    assert ett.repeat_last_scores(data, (0, 4), 1, input_len=2) == {"mse": 2.5, "mae": 1.5}


@pytest.mark.parametrize("decoder", ["pmf", "rmf", "linear"])
@pytest.mark.parametrize("channels", ["independent", "mixed"])
def test_segrnn_options_keep_shapes_and_round_trip(decoder: str, channels: str) -> None:
    torch.manual_seed(0)
    m = SegRNN(3, input_len=8, horizon=12, seg_len=4, d_model=8, decoder=decoder, channels=channels)
    x = torch.randn(5, 8, 3)
    y, state = m(x)
    assert y.shape == (5, 12, 3)
    assert state.spec == hs.StateSpec([hs.GRU(8)])
    assert state.batch_size == (15 if channels == "independent" else 5)
    copy = build_model(m.config())
    copy.load_state_dict(m.state_dict())
    assert torch.equal(copy(x)[0], y)


def test_subtract_last_makes_the_forecast_shift_with_the_level() -> None:
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8).eval()
    x = torch.randn(3, 8, 2)
    torch.testing.assert_close(m(x + 5.0)[0], m(x)[0] + 5.0)


def test_segrnn_rejects_bad_options_and_shapes() -> None:
    with pytest.raises(hs.ConfigError, match=r"SegRNN horizon=10 must be a positive multiple of seg_len=4"):
        SegRNN(2, input_len=8, horizon=10, seg_len=4)
    with pytest.raises(hs.ConfigError, match=r"SegRNN norm='std'; expected one of last, revin, none"):
        SegRNN(2, input_len=8, horizon=8, seg_len=4, norm="std")
    m = SegRNN(2, input_len=8, horizon=8, seg_len=4, d_model=4)
    with pytest.raises(hs.ShapeError, match=r"SegRNN x: expected shape \(batch, steps=8, vars=2\), got \(1, 7, 2\)"):
        m(torch.zeros(1, 7, 2))
    with pytest.raises(hs.ShapeError, match=r"horizon 9 exceeds the trained horizon 8"):
        m.forecast(torch.zeros(1, 8, 2), 9)


def test_context_state_of_forecast_equals_the_carried_stream() -> None:
    """forecast() on a long history carries the context through it, as the windows' pre-pass does."""
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8, context=6).eval()
    data = torch.randn(64, 2)
    windows = ForecastWindows(m, data, (8, 63))
    windows.starts = np.array([8, 13, 30, 51])  # different offsets modulo seg_len
    scores = _scorer(m).evaluate(windows)
    preds = torch.cat([m.forecast(data[None, : s + 8], 4) for s in windows.starts])  # the history before each
    true = torch.stack([data[s + 8 : s + 12] for s in windows.starts])
    assert ((preds - true) ** 2).mean().item() == pytest.approx(scores["mse"], rel=1e-5)
    cache = context_cache(m, data)
    assert cache.shape == (4, 17, 2, 6)


@needs_ett
def test_smoke_training_on_etth1_beats_repeat_last_on_validation() -> None:
    torch.manual_seed(0)
    name, values, _ = ett.load_ett(ETT_DIR / "ETTh1.csv")
    train, val, _ = hs.Split.ett(name, seq_len=96).borders
    mean, std = values[: train[1]].mean(0), values[: train[1]].std(0)
    data = torch.as_tensor((values - mean) / std, dtype=torch.float32)
    model = SegRNN(7, input_len=96, horizon=96, seg_len=24, d_model=32)
    config = hs.TrainConfig(epochs=1, lr=3e-3, loss="mae", clip=None, state_policy="batch", progress=False)
    trainer = hs.Trainer(model, config)
    history = trainer.fit(
        ForecastWindows(model, data, train, batch_size=64, shuffle=True),
        ForecastWindows(model, data, val, batch_size=1024),
    )
    scores = trainer.evaluate(ForecastWindows(model, data, val, batch_size=1024))
    baseline = ett.repeat_last_scores(data.numpy(), val, 96)
    assert history.best_epoch == 1
    assert scores["mse"] < 0.9 * baseline["mse"], (scores, baseline)


def _raw_windows(values: np.ndarray, starts: np.ndarray, before: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    hist = np.stack([values[s - before : s + 96] for s in starts])  # (n, before+96, 7) original units
    true = np.stack([values[s + 96 : s + 96 + horizon] for s in starts])
    return hist, true


@needs_ett
@pytest.mark.parametrize("protocol", ["fair", pytest.param("stateful", marks=pytest.mark.slow)])
def test_saved_run_reproduces_the_reported_test_scores(tmp_path: Path, protocol: str) -> None:
    """load_run(...).forecast on raw test windows gives the numbers run_one reports."""
    torch.manual_seed(0)
    logged: list[str] = []
    result = ett.run_one(
        ETT_DIR / "ETTh1.csv", 96, protocol, out=tmp_path, log=logged.append, d_model=16, seg_len=48, epochs=2
    )
    run = load_run(result.run_dir)
    assert run.extra["test"] == {"mse": result.test_mse, "mae": result.test_mae}
    # best_epoch counts from 1 in the result, the manifest and the log alike
    val = [
        float(re.search(r"epoch (\d+): .* val loss ([0-9.]+)", line).group(2)) for line in logged if " epoch " in line
    ]
    assert len(val) == result.epochs_run == 2
    assert result.best_epoch == run.extra["best_epoch"] == 1 + int(np.argmin(val))
    assert run.extra["val"]["mae"] == pytest.approx(min(val), abs=1e-4)
    name, values, _ = ett.load_ett(ETT_DIR / "ETTh1.csv")
    train, _, test = hs.Split.ett(name, seq_len=run.model.input_len).borders
    scaler = run.scaler
    # fitted on the train rows only (population std): no val or test row enters the scaling
    np.testing.assert_allclose(scaler.mean, values[: train[1]].mean(0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, values[: train[1]].std(0), rtol=1e-12)
    starts = window_starts(*test, run.model.input_len, 96) + run.model.input_len - 96  # first row of the 96-window
    if protocol == "fair":
        hist, true = _raw_windows(values, starts, 0, 96)
        pred = run.forecast(hist, 96)  # (n, 96, 7) original units
        err = scaler.transform(pred) - scaler.transform(true)
        assert float((err**2).mean()) == pytest.approx(result.test_mse, rel=1e-4)
        assert float(np.abs(err).mean()) == pytest.approx(result.test_mae, rel=1e-4)
    else:  # all history before each window: too slow for every window, so check a few against evaluate()
        picks = starts[[0, 1, 977, -1]]
        preds = np.concatenate([run.forecast(values[: s + 96], 96) for s in picks])
        data = torch.as_tensor(scaler.transform(values), dtype=torch.float32)
        windows = ForecastWindows(run.model, data, test)
        scorer = _scorer(run.model)
        for i, s in enumerate(picks):
            windows.starts = np.array([s + 96 - run.model.input_len])
            want = scorer.evaluate(windows)
            err = scaler.transform(preds[i : i + 1]) - scaler.transform(values[None, s + 96 : s + 192])
            assert float((err**2).mean()) == pytest.approx(want["mse"], rel=1e-4)


@needs_ett
@pytest.mark.slow
def test_full_benchmark_on_etth1_h96(tmp_path: Path) -> None:
    """The benchmark's default ETTh1 H96 run (minutes on 2 cores): tables written, published-level score."""
    results = ett.run_benchmark([ETT_DIR / "ETTh1.csv"], (96,), ("fair",), out=tmp_path, log=lambda s: None)
    assert results[0].test_mse < 0.40  # DLinear 0.386, SegRNN 0.368 (published, input 96)
    assert "| ETTh1 | 96 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("dataset,horizon,protocol,val_mse")
    run = load_run(results[0].run_dir)
    assert run.extra["test"]["mse"] == results[0].test_mse


def test_cli_registers_benchmark_ett_and_rejects_bad_options(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """hiddenstate"""

    ett.register(app)
    runner = CliRunner()
    assert "--horizons" in runner.invoke(app, ["benchmark", "ett", "--help"]).output
    bad = runner.invoke(app, ["benchmark", "ett", str(tmp_path / "ETTh1.csv"), "--protocol", "longer"])
    assert bad.exit_code == 2
    assert "--protocol 'longer': expected fair, stateful or both" in bad.output

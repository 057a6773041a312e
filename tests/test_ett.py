"""The ETT benchmark: protocol borders, SegRNN shapes and options, a smoke training run on ETTh1.

The data lives beside the checkout in ``../shared/data/ett`` (never in the repo); tests that need
it skip when it is absent. The full benchmark is behind ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.ett import benchmark as ett
from hiddenstate.ett.segtrain import FitConfig, context_cache, evaluate, fit, window_starts
from hiddenstate.model import build_model
from hiddenstate.models.segrnn import SegRNN

ETT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ett"
needs_ett = pytest.mark.skipif(
    not (ETT_DIR / "ETTh1.csv").exists(), reason=f"ETT data not found at {ETT_DIR} (../shared/data/ett beside the repo)"
)


def test_borders_follow_the_standard_split() -> None:
    assert ett.ett_borders("ETTm1", 69680) == ((0, 34560), (34464, 46080), (45984, 57600))
    assert ett.ett_borders("ETTh1", 17420) == ((0, 8640), (8544, 11520), (11424, 14400))
    # README: L=96, H=96 gives 34,369 / 11,425 / 11,425 windows on ETTm.
    counts = [len(window_starts(*r, 96, 96)) for r in ett.ett_borders("ETTm1", 69680)]
    assert counts == [34369, 11425, 11425]
    with pytest.raises(hs.DataError, match=r"weather: not an ETT file name"):
        ett.ett_borders("weather", 100)
    with pytest.raises(hs.DataError, match=r"ETTh1: has 100 rows, the ETT split needs 14400"):
        ett.ett_borders("ETTh1", 100)


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
    """forecast() on a long history carries the context through it, as the benchmark's cache does."""
    torch.manual_seed(0)
    m = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8, context=6).eval()
    data = torch.randn(64, 2)
    cache = context_cache(m, data)
    starts = np.array([8, 13, 30, 51])  # different offsets modulo seg_len
    scores = evaluate(m, data, starts, cache=cache)
    preds = torch.cat([m.forecast(data[None, : s + 8], 4) for s in starts])  # whole history before each window
    true = torch.stack([data[s + 8 : s + 12] for s in starts])
    assert ((preds - true) ** 2).mean().item() == pytest.approx(scores["mse"], rel=1e-5)


@needs_ett
def test_smoke_training_on_etth1_beats_repeat_last_on_validation() -> None:
    torch.manual_seed(0)
    name, values, _ = ett.load_ett(ETT_DIR / "ETTh1.csv")
    train, val, _ = ett.ett_borders(name, len(values))
    mean, std = values[: train[1]].mean(0), values[: train[1]].std(0)
    data = torch.as_tensor((values - mean) / std, dtype=torch.float32)
    model = SegRNN(7, input_len=96, horizon=96, seg_len=24, d_model=32)
    config = FitConfig(epochs=1, batch_size=32, max_steps=200, lr=3e-3)
    result = fit(model, data, train, val, config, log=lambda s: None)
    baseline = ett.repeat_last_scores(data.numpy(), val, 96)
    assert result.steps == 200
    assert result.val_mse < 0.9 * baseline["mse"], (result.val_mse, baseline)


def _raw_windows(values: np.ndarray, starts: np.ndarray, before: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    hist = np.stack([values[s - before : s + 96] for s in starts])  # (n, before+96, 7) original units
    true = np.stack([values[s + 96 : s + 96 + horizon] for s in starts])
    return hist, true


@needs_ett
@pytest.mark.parametrize("protocol", ["fair", pytest.param("stateful", marks=pytest.mark.slow)])
def test_saved_run_reproduces_the_reported_test_scores(tmp_path: Path, protocol: str) -> None:
    """hs.load_run(...).forecast on raw test windows gives the numbers run_one reports."""
    torch.manual_seed(0)
    result = ett.run_one(
        ETT_DIR / "ETTh1.csv",
        96,
        protocol,
        out=tmp_path,
        log=lambda s: None,
        d_model=16,
        seg_len=48,
        epochs=1,
        max_steps=3,
    )
    run = hs.load_run(result.run_dir)
    assert run.extra["test"] == {"mse": result.test_mse, "mae": result.test_mae}
    name, values, _ = ett.load_ett(ETT_DIR / "ETTh1.csv")
    _, _, test = ett.ett_borders(name, len(values), run.model.input_len)
    scaler = run.scaler
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
        cache = context_cache(run.model, data)
        for i, s in enumerate(picks):
            lo = s + 96 - run.model.input_len
            want = evaluate(run.model, data, np.array([lo]), cache=cache)
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
    run = hs.load_run(results[0].run_dir)
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

"""Every benchmark script runs end to end on minimal sizes (in-process, one repeat).

These prove the scripts work; they assert nothing about speed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


def _main(name: str):
    return importlib.import_module(f"benchmarks.{name}").main


def test_train_throughput_runs_and_checks_equivalence(capsys: pytest.CaptureFixture[str]) -> None:
    found = _main("train_throughput")(["--tiny", "--no-keras"])
    results = found["tiny"]
    assert {"hand-written PyTorch", "hs.Trainer", "hs.Trainer, fused backend"} <= set(results)
    assert all(r.units == 2 * 4 * 2 and r.rate > 0 for r in results.values())
    out = capsys.readouterr().out
    assert "| tiny   | hs.Trainer " in out and "Equivalence" in out
    assert "| hs.Trainer, backend 'torch' " in out


def test_inference_runs() -> None:
    results = _main("inference")(["--tiny", "--no-keras"])["tiny"]
    assert {"hand-written PyTorch", "hs.Stateful", "hs.Stateful (fused)"} <= set(results)
    assert all(r.rate > 0 for r in results.values())


def test_streaming_latency_records_every_call() -> None:
    results = _main("streaming_latency")(["--tiny", "--no-keras"])[2]
    assert all(len(r.per_call) == 3 and min(r.per_call) > 0 for r in results.values())


def test_threads_runs(capsys: pytest.CaptureFixture[str]) -> None:
    _main("threads")(["--tiny"])
    assert "Thread count" in capsys.readouterr().out


def test_profile_seed_times_every_phase() -> None:
    found = _main("profile_seed")(["--tiny"])
    assert set(found["hs, default backend"]) == {"forward", "loss", "backward", "optimizer"}


def test_sweep_writes_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    _main("sweep")(["--tiny", "--no-keras", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_script_runs_or_says_there_is_no_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    found = _main("gpu")(["--configs", "seed", "--precisions", "fp32", "--repeats", "1"])
    if not torch.cuda.is_available():
        assert found == {} and "CUDA is not available here" in capsys.readouterr().out
    else:
        assert found["seed", "fp32"]["hs.SequenceModel"] > 0


def test_main_runs_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    _main("__main__")(["--tiny", "--no-keras"])
    out = capsys.readouterr().out
    for title in ("Training throughput", "Inference throughput", "Streaming latency", "Thread count"):
        assert f"## {title}" in out


@pytest.mark.slow
def test_keras_candidates_run() -> None:
    pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    results = _main("train_throughput")(["--tiny", "--no-fused"])["tiny"]
    assert results["Keras 3 / TF, stateful"].rate > 0


def test_serve_backend_prints_both_backends(capsys: pytest.CaptureFixture[str]) -> None:
    _main("serve_backend")(["--tiny"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[:2] == ["8", "4"] and row[-1].endswith("x") and float(row[2]) > 0


def test_the_probabilistic_seed_summary_averages_and_pairs_each_seed() -> None:
    p = importlib.import_module("benchmarks.probabilistic")
    rows = [
        {"dataset": "d", "model": "hiddenstate", "seed": 0, "CRPS": 0.20, "cov80": 0.8, "train_s": 1.0},
        {"dataset": "d", "model": "deepar (gluonts)", "seed": 0, "CRPS": 0.18, "cov80": 0.9, "train_s": 3.0},
        {"dataset": "d", "model": "SeasonalNaive", "seed": None, "wQL": 0.3},
        {"dataset": "d", "model": "hiddenstate", "seed": 1, "CRPS": 0.19, "cov80": 0.7, "train_s": 2.0},
        {"dataset": "d", "model": "deepar (gluonts)", "seed": 1, "CRPS": 0.22, "cov80": 0.8, "train_s": 5.0},
        {"dataset": "d", "model": "hiddenstate", "seed": 2, "CRPS": 0.18, "cov80": 0.9, "train_s": 3.0},
        {"dataset": "d", "model": "deepar (gluonts)", "seed": 2, "CRPS": 0.19, "cov80": 0.7, "train_s": 4.0},
    ]
    means = {r["model"]: r for r in p.mean_rows(rows)}
    assert sorted(means) == ["deepar (gluonts)", "hiddenstate"]
    assert means["hiddenstate"]["seed"] == "mean of 3"
    assert means["hiddenstate"]["CRPS"] == pytest.approx(0.19) and means["deepar (gluonts)"]["train_s"] == 4.0
    line = p.paired(rows)
    assert "(0: 0.200/0.180, 1: 0.190/0.220, 2: 0.180/0.190)" in line
    assert "ours at or below on 2 of 3" in line
    # differences +0.02, -0.03, -0.01: mean -0.0067, sd 0.0252, standard error 0.0145
    assert "difference -0.0067 +- 0.0145" in line
    assert "| seed |" in p.table(rows) and "| mean of 3 |" in p.table(rows + p.mean_rows(rows))


def test_the_probabilistic_breakdown_splits_the_crps_by_series_and_step() -> None:
    p = importlib.import_module("benchmarks.probabilistic")
    rng = np.random.default_rng(0)
    y = rng.integers(8, 16, size=(2 * 3, p.H)) / 8  # 2 windows x 3 series, window-major; exact in binary
    samples = np.repeat(y[None], 10, axis=0)  # exact for every series ...
    samples[:, 1::3, 32:] += 1.0  # ... but series "b" is off by 1 in the last third of the horizon
    line = p.breakdown({"m": samples}, y, ["a", "b", "c"])
    b = p.metrics.crps(samples[:, 1::3], y[1::3], normalize=True)
    assert b > 0 and f"a 0.000, b {b:.3f}, c 0.000" in line
    assert "1-16 0.000, 17-32 0.000, 33-48" in line and "33-48 0.000" not in line


def test_the_probabilistic_static_inputs_use_only_the_training_rows() -> None:
    pd = pytest.importorskip("pandas")
    p = importlib.import_module("benchmarks.probabilistic")
    df = pd.DataFrame({"unique_id": ["a"] * 4 + ["b"] * 4, "y": [1.0, -3.0, 100.0, 100.0, 4.0, 4.0, 0.0, 0.0]})
    logs = p.static_features(df, 2, "logscale")
    assert logs["unique_id"].tolist() == ["a", "b"]
    assert logs["log_scale"].tolist() == pytest.approx([np.log(2.0), np.log(4.0)])  # rows 2, 3 unread
    ids = p.static_features(df, 2, "id")
    assert ids[["is_0", "is_1"]].to_numpy().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert p.static_features(df, 2, "none") is None
    with pytest.raises(SystemExit, match="--static: expected none, logscale or id"):
        p.static_features(df, 2, "scale")

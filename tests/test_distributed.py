"""Distributed training under real torchrun process groups (gloo, 2 CPU processes): N ranks equal
one process, resharded resume, a SIGKILLed worker restarted by torchrun, a failing rank."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import hiddenstate as hs
from hiddenstate.distributed import TIMEOUT_ENV, LaneBlocks, RankBatches, lane_blocks, setup
from hiddenstate.runs.run import list_checkpoints, load_checkpoint
from hiddenstate.runs.snapshot import capture_rng, restore_rng

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
SRC = HERE.parent / "src"
EPOCHS = 4
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["HIDDENSTATE_COLLECTIVE_TIMEOUT"] = "30"  # a lost rank fails the others within 30 s, never hangs
    return env


def _torchrun(nproc: int, *args: str, max_restarts: int = 0, program: tuple[str, ...] = (str(WORKER),)) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--max-restarts",
        str(max_restarts),
        "--monitor-interval",
        "0.2",
        *program,
        *args,
    ]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def _in_process(*args: str) -> None:
    """The worker in this process: one process, no torchrun (the global RNG is put back after)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng, threads = capture_rng(), torch.get_num_threads()
    try:
        module.main(list(args))
    finally:
        restore_rng(rng)
        torch.set_num_threads(threads)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert set(a) == set(b)
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if k != "epoch"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """One process, uninterrupted, on the equal and on the ragged lanes."""
    out = tmp_path_factory.mktemp("one")
    _in_process("--result", str(out / "equal.st"), "--epochs", str(EPOCHS))
    _in_process("--result", str(out / "ragged.st"), "--epochs", str(EPOCHS), "--ragged")
    return {"equal": _load(out / "equal.st"), "ragged": _load(out / "ragged.st")}


@pytest.fixture(scope="module")
def two_ranks_ragged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Two ranks, uninterrupted, on the ragged lanes, saved as a run."""
    out = tmp_path_factory.mktemp("two")
    _run(
        _torchrun(2, "--result", str(out / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--run-dir", str(out / "run"))
    )
    return out / "run", _load(out / "r.st")


# -- in one process: the lane layout ------------------------------------------------------------


def test_lane_blocks_are_contiguous_and_balanced() -> None:
    assert lane_blocks(5, 2) == ((0, 3), (3, 5))
    assert lane_blocks(4, 3) == ((0, 2), (2, 3), (3, 4))
    assert LaneBlocks.of(5, 2).lane_ranks() == [0, 0, 0, 1, 1]
    with pytest.raises(hs.ConfigError, match="2 lanes cannot be spread over 3 ranks"):
        lane_blocks(2, 3)


def test_a_short_block_is_padded_with_masked_idle_rows() -> None:
    series = [np.arange(30.0)[:, None] + k for k in range(5)]
    batches = hs.StatefulBatches(series, series, batch_size=5, steps=4, split=False)
    blocks = LaneBlocks.of(5, 2)
    first, second = (list(RankBatches(batches, blocks, r)) for r in (0, 1))
    assert len(first) == len(second) == len(batches)  # every rank runs every chunk
    b0, b1, whole = first[0], second[0], batches[0]
    assert torch.equal(b0.x, whole.x[:3]) and torch.equal(b1.x[:2], whole.x[3:])
    assert b1.batch_size == 3 and not b1.mask[2].any() and b1.lanes[2] is None
    assert torch.equal(b1.x[2], torch.zeros_like(b1.x[2]))
    assert b0.global_valid == b1.global_valid == whole.valid_count


def test_batches_the_ranks_cannot_split_are_refused_by_name() -> None:
    from hiddenstate.data.lanes import Batch
    from hiddenstate.ett.windows import WindowBatch

    rows, ones = torch.zeros(4, 3, 1), torch.ones(4, dtype=torch.bool)
    window = WindowBatch(rows, rows, ones[:, None].expand(4, 3), ones, None, torch.arange(4))
    with pytest.raises(hs.ConfigError, match=r"^distributed training: batch 0 \(WindowBatch\) has no cond, lanes; "):
        RankBatches([window], LaneBlocks.of(4, 2), 0).rows(window)

    @dataclass(frozen=True, eq=False)
    class WithState(Batch):
        state: hs.State | None = None

    state = hs.State.zeros(hs.StateSpec([hs.LSTM(2)]), 4)
    batch = WithState(rows, rows, ones, ones[:, None].expand(4, 3), rows[:, 0], (None,) * 4, state)
    with pytest.raises(hs.ConfigError, match=r"batch 0 brings its own starting state \(state_policy 'batch'\)"):
        list(RankBatches([batch], LaneBlocks.of(4, 2), 1))


def test_outside_torchrun_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert setup(hs.TrainConfig()) is None
    assert hs.Trainer(hs.SequenceModel(1, 1, [hs.LSTM(4)]), hs.TrainConfig(progress=False)).distributed is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert setup(hs.TrainConfig(distributed="off")) is None  # "off": one process even under torchrun
    with pytest.raises(hs.ConfigError, match=r"TrainConfig\.distributed: expected one of auto, off, got 'on'"):
        hs.TrainConfig(distributed="on")


@pytest.mark.parametrize("raw", ["0", "nan", "inf", "1e300"])
def test_a_collective_timeout_out_of_bounds_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    for name, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"), (TIMEOUT_ENV, raw)):
        monkeypatch.setenv(name, value)
    expected = f"HIDDENSTATE_COLLECTIVE_TIMEOUT: expected seconds > 0 and at most 604800 (a week), got '{raw}'"
    with pytest.raises(hs.ConfigError, match=f"^{re.escape(expected)}$"):  # before any process group is made
        setup(hs.TrainConfig(device="cpu"))


# -- real process groups ------------------------------------------------------------------------


def test_two_ranks_equal_one_process_on_equal_lanes(tmp_path: Path, one_process: dict) -> None:
    _run(_torchrun(2, "--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS)))
    diff = _max_diff(_load(tmp_path / "r.st"), one_process["equal"])
    assert max(diff.values()) < TOL, diff


def test_two_ranks_equal_one_process_on_ragged_lanes(two_ranks_ragged: tuple, one_process: dict) -> None:
    # 5 lanes: rank 0 holds 3, rank 1 holds 2 and a padding row; the lanes end at different chunks
    diff = _max_diff(two_ranks_ragged[1], one_process["ragged"])
    assert max(diff.values()) < TOL, diff


def test_two_ranks_equal_one_process_with_an_encoder_and_detach_every_2(tmp_path: Path) -> None:
    # the encoder runs only where a lane resets (DDP looks for unused parameters); a window's two
    # chunks are weighted by every rank's valid elements
    args = ("--epochs", "2", "--ragged", "--policy", "carry+encode", "--detach-every", "2")
    _in_process("--result", str(tmp_path / "one.st"), *args)
    _run(_torchrun(2, "--result", str(tmp_path / "two.st"), *args))
    diff = _max_diff(_load(tmp_path / "two.st"), _load(tmp_path / "one.st"))
    assert max(diff.values()) < TOL, diff


def test_two_ranks_equal_one_process_with_a_likelihood_on_scaled_batches(tmp_path: Path) -> None:
    # each row's series scale must travel with the row to the rank that owns it
    args = ("--epochs", "2", "--ragged", "--scaled")
    _in_process("--result", str(tmp_path / "one.st"), *args)
    _run(_torchrun(2, "--result", str(tmp_path / "two.st"), *args))
    diff = _max_diff(_load(tmp_path / "two.st"), _load(tmp_path / "one.st"))
    assert max(diff.values()) < TOL, diff


def test_two_ranks_equal_one_process_with_a_moving_average_and_resume_it(tmp_path: Path) -> None:
    # every rank averages the same stepped weights; validation (across ranks) scores the average,
    # and a run stopped after epoch 1 on two ranks resumes in one process with the average it saved
    args = ("--epochs", "3", "--ragged", "--ema", "0.9")
    _in_process("--result", str(tmp_path / "one.st"), *args)
    _run(_torchrun(2, "--result", str(tmp_path / "two.st"), *args))
    one = _load(tmp_path / "one.st")
    diff = _max_diff(_load(tmp_path / "two.st"), one)
    assert max(diff.values()) < TOL, diff
    run = tmp_path / "run"
    _run(_torchrun(2, "--result", str(tmp_path / "part.st"), *args, "--run-dir", str(run), "--stop-rank", "0"))
    assert (run / "checkpoints" / "epoch-0001" / "ema.safetensors").is_file()
    _in_process("--result", str(tmp_path / "resumed.st"), *args, "--run-dir", str(run), "--resume")
    diff = _max_diff(_load(tmp_path / "resumed.st"), one)
    assert max(diff.values()) < TOL, diff
    plain = _load(tmp_path / "resumed.st")["val_loss"]  # and the average is what made the difference
    _in_process("--result", str(tmp_path / "plain.st"), "--epochs", "3", "--ragged")
    assert float(_load(tmp_path / "plain.st")["val_loss"]) != pytest.approx(float(plain), rel=1e-4)


def test_a_distributed_run_loads_in_one_plain_process(two_ranks_ragged: tuple) -> None:
    run_dir, result = two_ranks_ragged
    run = hs.load_run(run_dir)
    assert run.manifest["distributed"] == {"world_size": 2, "lane_ranks": [0, 0, 0, 1, 1], "blocks": [[0, 3], [3, 5]]}
    assert run.lane_state is not None and run.lane_state.batch_size == 5  # every lane, by global lane id
    for k, v in run.lane_state.to_dict().items():
        assert torch.equal(v, result[f"state.{k}"])
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, result[f"weight.{k}"])
    ckpt = load_checkpoint(run_dir)
    assert ckpt.distributed is not None and ckpt.distributed["world_size"] == 2
    assert ckpt.rank_rng is not None and len(ckpt.rank_rng) == 2  # each rank's generators
    assert not torch.equal(ckpt.rank_rng[0]["torch"], ckpt.rank_rng[1]["torch"])  # ranks draw different masks


def test_resume_two_ranks_in_one_process(tmp_path: Path, one_process: dict) -> None:
    run = tmp_path / "run"
    _run(_torchrun(2, "--result", str(tmp_path / "half.st"), "--epochs", "2", "--ragged", "--run-dir", str(run)))
    assert json.loads((list_checkpoints(run)[-1] / "checkpoint.json").read_text())["distributed"]["world_size"] == 2
    _in_process(
        "--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--run-dir", str(run), "--resume"
    )
    diff = _max_diff(_load(tmp_path / "r.st"), one_process["ragged"])
    assert max(diff.values()) < TOL, diff


def test_resume_one_process_on_two_ranks(tmp_path: Path, one_process: dict) -> None:
    run = tmp_path / "run"
    _in_process("--result", str(tmp_path / "half.st"), "--epochs", "2", "--ragged", "--run-dir", str(run))
    args = ("--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--run-dir", str(run), "--resume")
    _run(_torchrun(2, *args))
    diff = _max_diff(_load(tmp_path / "r.st"), one_process["ragged"])
    assert max(diff.values()) < TOL, diff
    assert hs.load_run(run).manifest["distributed"]["world_size"] == 2


def test_a_sigkilled_worker_is_restarted_and_ends_as_uninterrupted(tmp_path: Path, two_ranks_ragged: tuple) -> None:
    run, pids = tmp_path / "run", tmp_path / "pids"
    args = ("--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--run-dir", str(run))
    cmd = _torchrun(2, *args, "--kill-rank", "1", "--pids", str(pids), max_restarts=1)
    log = tmp_path / "torchrun.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=_env(), stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            while not (run / "checkpoints" / "epoch-0002").is_dir() or not (pids / "rank-1-restart-0").exists():
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 90 s"
                time.sleep(0.02)
            os.kill(int((pids / "rank-1-restart-0").read_text()), signal.SIGKILL)  # mid-run, in epoch 3
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-6000:]
    assert (pids / "rank-1-restart-1").exists()  # the group was restarted by torchrun ...
    result = _load(tmp_path / "r.st")
    assert int(result["epoch"]) == EPOCHS
    for k, v in two_ranks_ragged[1].items():  # ... resumed from its checkpoint: bitwise the uninterrupted run
        assert torch.equal(result[k], v), k


def test_an_exception_on_one_rank_ends_the_group_with_its_name(tmp_path: Path) -> None:
    cmd = _torchrun(2, "--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--raise-rank", "1")
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "hiddenstate: rank 1 of 2 failed: ValueError: planted failure after epoch 1" in output
    assert "ValueError: planted failure after epoch 1" in output.split("Root Cause")[-1]  # torchrun's summary
    assert "rank      : 1" in output.split("Root Cause")[-1]
    assert not (tmp_path / "r.st").exists()


def test_ranks_given_different_batches_are_refused_on_every_rank(tmp_path: Path) -> None:
    cmd = _torchrun(2, "--result", str(tmp_path / "r.st"), "--ragged", "--other-data-rank", "1")
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    message = "the ranks were given different batches (number, lanes) (rank 0: [8, 5], rank 1: [6, 4])"
    assert f"failed: hiddenstate.errors.ConfigError: distributed training: {message}" in done.stderr  # at fit's start


def test_max_minutes_stops_every_rank_after_the_same_chunk(tmp_path: Path) -> None:
    # rank 1's budget runs out within a few milliseconds, rank 0's never: both must stop together
    result = tmp_path / "r.st"
    args = ("--result", str(result), "--epochs", str(EPOCHS), "--max-minutes", "1", "--fast-clock-rank", "1")
    _run(_torchrun(2, *args, "--each-rank"), timeout=60)
    assert int(_load(result)["epoch"]) == 1
    first, second = (_load(Path(f"{result}.rank-{r}")) for r in (0, 1))
    assert int(first["steps"]) == int(second["steps"]) < 6  # stopped inside epoch 1 (6 chunks), on both
    assert max(_max_diff(first, second).values()) == 0.0  # the same weights


def test_a_callback_stop_on_one_rank_stops_every_rank_after_that_epoch(tmp_path: Path) -> None:
    # rank 1 alone asks to stop after epoch 1: without the agreement rank 0 would train on alone
    # (and wait in a collective no one joins)
    result = tmp_path / "r.st"
    _run(_torchrun(2, "--result", str(result), "--epochs", str(EPOCHS), "--stop-rank", "1", "--each-rank"), timeout=60)
    assert int(_load(result)["epoch"]) == 1 < EPOCHS
    first, second = (_load(Path(f"{result}.rank-{r}")) for r in (0, 1))
    assert int(first["steps"]) == int(second["steps"]) == 6  # the whole first epoch (6 chunks), on both
    assert max(_max_diff(first, second).values()) == 0.0


_FAILING_COMMAND = """
import os
import re
import hiddenstate.train.trainer as trainer
from hiddenstate.cli import main
from hiddenstate.errors import CheckpointError
save = trainer.Trainer._save
def planted(self, run):
    if os.environ["RANK"] == "1":
        raise CheckpointError("planted failure on rank 1")
    save(self, run)
trainer.Trainer._save = planted
main()
"""


def test_a_command_line_error_on_one_rank_leaves_the_group_at_once(tmp_path: Path) -> None:
    # the failing rank prints its error and exits: it must not wait at exit for the ranks that wait for it
    script = tmp_path / "train.py"
    script.write_text(_FAILING_COMMAND)
    args = ("train", "--synthetic-steps", "500", "--epochs", "2", "--hidden", "4", "--batch-size", "4", "--steps", "16")
    args += ("--no-plots", "--out", str(tmp_path / "run"))
    cmd = _torchrun(2, *args, program=(str(script),))
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Error: rank 1: planted failure on rank 1" in output
    assert "Timed out" not in output, output[-4000:]  # no rank waited out the collective timeout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nccl needs CUDA")
def test_nccl_ranks_equal_one_process_on_cuda(tmp_path: Path) -> None:
    nproc = min(2, torch.cuda.device_count())  # one device per local rank
    one = tmp_path / "one.st"
    _run([sys.executable, str(WORKER), "--result", str(one), "--epochs", str(EPOCHS), "--ragged", "--device", "cuda"])
    _run(_torchrun(nproc, "--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--device", "cuda"))
    diff = _max_diff(_load(tmp_path / "r.st"), _load(one))
    assert max(diff.values()) < 1e-4, diff  # cuDNN's kernels and nccl's sums add up in their own order


@pytest.mark.slow
def test_resume_two_ranks_on_three(tmp_path: Path, one_process: dict) -> None:
    run = tmp_path / "run"
    _run(_torchrun(2, "--result", str(tmp_path / "half.st"), "--epochs", "2", "--ragged", "--run-dir", str(run)))
    args = ("--result", str(tmp_path / "r.st"), "--epochs", str(EPOCHS), "--ragged", "--run-dir", str(run), "--resume")
    _run(_torchrun(3, *args))  # 5 lanes: blocks of 2, 2 and 1 (+ a padding row)
    diff = _max_diff(_load(tmp_path / "r.st"), one_process["ragged"])
    assert max(diff.values()) < TOL, diff
    assert hs.load_run(run).manifest["distributed"]["blocks"] == [[0, 2], [2, 4], [4, 5]]


@pytest.mark.slow
def test_the_command_line_trains_under_torchrun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("--synthetic-steps", "600", "--epochs", "2", "--hidden", "8", "--batch-size", "4", "--steps", "16")
    args += ("--horizon", "4", "--no-plots", "--out", str(out))
    done = _run(_torchrun(2, *args, program=("-m", "hiddenstate", "train")), timeout=240)
    assert done.stdout.count("trained to epoch 2") == 1  # rank 0 alone prints
    run = hs.load_run(out)
    assert run.manifest["distributed"]["world_size"] == 2 and run.lane_state.batch_size == 4
    assert (out / "evaluation.json").is_file()


@pytest.mark.slow
def test_the_benchmark_runs() -> None:
    sys.path.insert(0, str(HERE.parent))
    try:
        from benchmarks.distributed import main

        runs = main(["--tiny"])
    finally:
        sys.path.remove(str(HERE.parent))
    assert [len(runs["tiny"][n]) for n in ("1", "2")] == [1, 1]
    assert all(r["rate"] > 0 and r["world_size"] == int(n) for n in ("1", "2") for r in runs["tiny"][n])

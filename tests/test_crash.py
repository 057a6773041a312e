"""SIGKILL a real training process at random moments, many of them inside durable writes: before a
checkpoint file is written, between a write and its fsync, between the fsync and the rename.

After every kill, each checkpoint left in the run directory must load (files present, sizes and
sha256 as recorded) or be refused with a CheckpointError; the next process resumes from the
newest one. When the last process finishes, its record must equal an uninterrupted run's:
the kills cost time, never correctness. The moments come from a seed, drawn and printed each run,
or taken from ``HIDDENSTATE_CRASH_SEED`` to replay one.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import hiddenstate as hs
from hiddenstate.runs.run import list_checkpoints, load_checkpoint

WORKER = Path(__file__).with_name("crash_worker.py")
PAUSE = 0.02  # seconds the library pauses at each checkpoint stage (test-only hook)
KILLS = 10
SEED_ENV = "HIDDENSTATE_CRASH_SEED"  # set it to the seed a failure printed, to replay that run
FILES = ("model", "optimizer", "rng", "lane_state", "best")
# every stage at which the library pauses: before each checkpoint file is written and between its
# write and its fsync; the directory's fsync, rename and pruning; and metrics.csv's atomic write,
# between the write and its fsync and between the fsync and the rename
STAGES = (
    *(
        f"{step} {name}"
        for name in [*(f"{f}.safetensors" for f in FILES), "checkpoint.json"]
        for step in ("write", "fsync")
    ),
    "fsync dir",
    "rename",
    "prune",
    "fsync metrics.csv",
    "rename metrics.csv",
)
# the first in-write kills land between a write and its fsync, and between the fsync and the rename
FORCED = (tuple(s for s in STAGES if s.startswith("fsync ") and s != "fsync dir"), ("rename metrics.csv",))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash test forks its training processes")


def _load_worker():
    spec = importlib.util.spec_from_file_location("crash_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """The fork server subprocess and a thread that reads its output lines into a queue."""

    def __init__(self) -> None:
        env = {**os.environ, "HIDDENSTATE_CHECKPOINT_PAUSE": str(PAUSE), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait_for(self, predicate, timeout: float, *, required: bool = True) -> str | None:
        """The first line that satisfies ``predicate``; after ``timeout`` seconds, an error
        (or None when not ``required``). A child's exit before that line is an error."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if not required:
                    return None
                raise AssertionError("timed out; output so far:\n" + "\n".join(self.log[-40:])) from None
            self.log.append(line)
            if predicate(line):
                return line
            if line == "<eof>" or line.startswith("exit "):
                raise AssertionError(f"unexpected {line!r}; output so far:\n" + "\n".join(self.log[-40:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _check_checkpoints(run: Path, model: torch.nn.Module) -> tuple[list[int], list[str]]:
    """Load every checkpoint left; return the epochs that loaded and the refusals."""
    loaded, refused = [], []
    for path in list_checkpoints(run):
        try:
            ckpt = load_checkpoint(path, model=model)
        except hs.CheckpointError as e:
            refused.append(str(e))
            continue
        assert ckpt.epoch == int(path.name.split("-")[1])
        model.load_state_dict(ckpt.model_state)  # the weights really fit
        loaded.append(ckpt.epoch)
    return loaded, refused


def test_sigkill_at_random_moments_never_leaves_a_half_written_checkpoint(tmp_path: Path) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"crash test seed {seed} (rerun with {SEED_ENV}={seed})")
    rnd = random.Random(seed)
    run = tmp_path / "run"
    server = Server()  # imports torch in the background while the reference trains here
    try:
        worker = _load_worker()
        model, config, train, val = worker.job()
        reference = hs.Trainer(model, config)
        reference.fit(train, val)
        probe = worker.job()[0]

        server.wait_for(lambda line: line == "ready", timeout=180)
        newest, in_writes, stages_killed = 0, 0, []
        for kill in range(KILLS):
            server.send(f"train {run}")
            pid = int(server.wait_for(lambda line: line.startswith("pid "), timeout=30).split()[1])
            if kill % 2 == 0:  # inside the n-th checkpoint write of this process, at a chosen stage
                n, stage = rnd.randint(1, 2), rnd.choice(FORCED[kill // 2] if kill // 2 < len(FORCED) else STAGES)
                stages_killed.append(stage)
                for _ in range(n):
                    server.wait_for(lambda line: line == "hiddenstate-checkpoint-stage write model.safetensors", 60)
                server.wait_for(lambda line, s=stage: line == f"hiddenstate-checkpoint-stage {s}", timeout=60)
                time.sleep(rnd.uniform(0, PAUSE))
                in_writes += 1
            else:  # anywhere (before the first checkpoint, in training, in a write), within one epoch
                server.wait_for(lambda line: line.startswith("epoch "), rnd.uniform(0.0, 1.2), required=False)
            os.kill(pid, signal.SIGKILL)
            code = int(server.wait_for(lambda line, p=pid: line.startswith(f"exit {p} "), timeout=30).split()[2])
            assert code == -signal.SIGKILL, f"seed {seed}: the child exited with {code} before it was killed"
            loaded, refused = _check_checkpoints(run, probe)
            # Commits are atomic, so nothing is ever refused; a refusal would still be safe, a half-load never.
            assert not refused, f"seed {seed}, kill {kill}: {refused}"
            assert not loaded or max(loaded) >= newest, f"seed {seed}: checkpoints went backwards"
            newest = max(loaded, default=newest)
        assert in_writes >= KILLS // 2 and newest >= 1, f"seed {seed}: no checkpoint was ever resumed from"
        assert stages_killed[0] in FORCED[0] and stages_killed[1] in FORCED[1], stages_killed
        print(f"killed inside writes at: {', '.join(stages_killed)}")

        server.send(f"train {run} nopause")
        pid = int(server.wait_for(lambda line: line.startswith("pid "), timeout=30).split()[1])
        server.wait_for(lambda line: line == "done", timeout=120)
        assert server.wait_for(lambda line: line.startswith(f"exit {pid} "), timeout=30) == f"exit {pid} 0"
    finally:
        server.close()

    debris = [p.name for folder in (run, run / "checkpoints") for p in folder.iterdir() if p.name.startswith(".")]
    assert not debris, f"seed {seed}: temp files left after the last run: {debris}"
    final = load_checkpoint(run, model=probe)
    assert final.epoch == config.epochs
    history = final.trainer["history"]
    assert [r["train_loss"] for r in history["rows"]] == reference.history.train_loss, f"seed {seed}"
    assert [r["val_loss"] for r in history["rows"]] == reference.history.val_loss
    assert all(torch.equal(v, final.best_weights[k]) for k, v in reference.model.state_dict().items())
    assert all(
        torch.equal(a, b) for a, b in zip(final.lane_state.tensors(), reference.lane_state.tensors(), strict=True)
    )

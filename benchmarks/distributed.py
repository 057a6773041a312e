"""One rank against two: data-parallel ``hs.Trainer`` under torchrun, side by side in one run.

    python -m benchmarks.distributed                 # seed and wide, about 2 minutes
    python -m benchmarks.distributed --repeats 5     # steadier figures on a quiet machine

Each repeat launches ``torchrun --nproc-per-node 1`` and ``--nproc-per-node 2`` in turn
(interleaved, so a burst of other load hits both alike); every rank uses one CPU thread (the
configurations' ``threads=1``). In each launch the ranks train every configuration for a few
epochs through ``hs.Trainer`` with the lanes split between them; the figure is global
sample-steps per second (every lane's steps, over the median epoch after the first). Scaling
efficiency is the 2-rank rate over twice the 1-rank rate; ``(CPU time)`` is the speed-up from the
busiest rank's CPU seconds per epoch, which leaves out waiting for a core on a loaded machine.
Each launch also times the gradient all-reduce of the model's size alone, which is what a rank
pays per chunk on top of its half of the work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CONFIGS, TINY, Config, environment, rate, table

HEADERS = ["config", "layers", "1 rank", "2 ranks", "speed-up", "efficiency", "(CPU time)", "chunk ms 1 / 2"]
HEADERS += ["all-reduce ms"]


def _worker(names: list[str], epochs: int, out: Path) -> None:
    """One rank of a launch: train each configuration, then (rank 0) write the figures."""
    import torch
    import torch.distributed as dist

    import hiddenstate as hs
    from benchmarks.common import lane_chunks

    found = {}
    for name in names:
        cfg = TINY if name == "tiny" else CONFIGS[name]
        batches, _, _ = lane_chunks(cfg)
        torch.manual_seed(0)
        model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout)
        config = hs.TrainConfig(epochs=epochs, lr=cfg.lr, threads=1, progress=False)
        trainer = hs.Trainer(model, config)
        cpu = [time.process_time()]  # this rank's CPU time at each epoch's end
        trainer.fit(batches, callbacks=[lambda trainer, row, cpu=cpu: cpu.append(time.process_time())])
        seconds = statistics.median(r["seconds"] for r in trainer.history.rows[1:] or trainer.history.rows)
        per_epoch = [b - a for a, b in itertools.pairwise(cpu)]
        busy = torch.tensor(statistics.median(per_epoch[1:] or per_epoch))
        dist.all_reduce(busy, op=dist.ReduceOp.MAX)  # the busiest rank sets the pace
        grads = torch.zeros(sum(p.numel() for p in model.parameters()))  # one step's gradients
        torch.set_num_threads(1)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(grads)
        reduce_ms = (time.perf_counter() - start) / 20 * 1e3
        found[cfg.name] = {
            "rate": cfg.sample_steps / seconds,
            "cpu_rate": cfg.sample_steps / float(busy),
            "chunk_ms": seconds / cfg.chunks * 1e3,
            "reduce_ms": reduce_ms,
            "world_size": dist.get_world_size(),
        }
    if dist.get_rank() == 0:
        out.write_text(json.dumps(found))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(nproc: int, names: list[str], epochs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc)]
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", str(Path(__file__).resolve())]
        cmd += ["--worker", ",".join(names), "--epochs", str(epochs), "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        src = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(src / "src"), str(src), env.get("PYTHONPATH", "")])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"torchrun --nproc-per-node {nproc} failed:\n{done.stdout[-2000:]}{done.stderr[-6000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[dict]]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="seed,wide", help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=3, help="launches of each size, interleaved (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per launch; the first is not timed")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = ["tiny"] if args.tiny else args.configs.split(",")
    if args.worker is not None:
        _worker(args.worker.split(","), args.epochs, args.out)
        return {}
    print(f"## Data-parallel training: 1 rank vs 2 ranks\n\n{environment()}\n")
    runs: dict[str, dict[str, list[dict]]] = {n: {"1": [], "2": []} for n in names}
    repeats = 1 if args.tiny else args.repeats
    for _ in range(repeats):
        for nproc in (1, 2):
            figures = _launch(nproc, names, 2 if args.tiny else args.epochs, timeout=300)
            for name, row in figures.items():
                runs[name][str(nproc)].append(row)
    rows = []
    for name, by in runs.items():
        cfg: Config = TINY if name == "tiny" else CONFIGS[name]
        one, two = (statistics.median(r["rate"] for r in by[n]) for n in ("1", "2"))
        cpu1, cpu2 = (statistics.median(r["cpu_rate"] for r in by[n]) for n in ("1", "2"))
        chunk1, chunk2 = (statistics.median(r["chunk_ms"] for r in by[n]) for n in ("1", "2"))
        reduce2 = statistics.median(r["reduce_ms"] for r in by["2"])
        layers = " + ".join(f"LSTM({h})" for h in cfg.layers)
        rows.append([name, f"batch {cfg.batch}, {layers}", rate(one), rate(two), f"{two / one:.2f}x",
                     f"{two / (2 * one):.0%}", f"{cpu2 / cpu1:.2f}x", f"{chunk1:.2f} / {chunk2:.2f}",
                     f"{reduce2:.2f}"])  # fmt: skip
    print(table(HEADERS, rows))
    print(
        f"\nglobal sample-steps/s (every lane's steps), median over {repeats} launches per size of the "
        "median epoch after the first; 1 CPU thread per rank; gloo on loopback. (CPU time): the speed-up from "
        "each launch's busiest rank's CPU seconds per epoch, which leaves out time spent waiting for a core "
        "(and for the other rank)"
    )
    return runs


if __name__ == "__main__":
    main()

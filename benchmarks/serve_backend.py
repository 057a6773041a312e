"""Which backend the service should advance its streams on: the default (oneDNN) or the fused C kernel.

    python -m benchmarks.serve_backend                    # hidden 8..128, batches of 1..256 streams
    python -m benchmarks.serve_backend --hidden 16,64 --repeats 21

Times ``ServedModel.advance`` (one micro-batch: every stream one step, as most observes bring)
on two LSTM layers of the given hidden size, the two backends interleaved in one process, and
prints the median time per call and the fused kernel's speed-up (above 1: fused is faster). The
service picks fused only for the sizes where it wins (``FUSED_MAX_HIDDEN`` in serve/served.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import hiddenstate as hs
from hiddenstate.serve.served import ServedModel


def _time(served: ServedModel, starts: torch.Tensor, fresh: np.ndarray, xs: list[np.ndarray], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        served.advance(starts, fresh, xs)
    return (time.perf_counter() - began) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="8,16,32,64,128", help="hidden sizes (two LSTM layers each)")
    parser.add_argument("--batch", default="1,16,256", help="streams per micro-batch")
    parser.add_argument("--steps", type=int, default=1, help="rows each stream brings")
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per candidate (median)")
    parser.add_argument("--tiny", action="store_true", help="one small size, one repeat: proves the script runs")
    args = parser.parse_args(argv)
    hiddens = [8] if args.tiny else [int(h) for h in args.hidden.split(",")]
    batches = [4] if args.tiny else [int(b) for b in args.batch.split(",")]
    repeats = 1 if args.tiny else args.repeats
    torch.set_num_threads(1)
    print(
        f"# serve backend: ServedModel.advance, 2 LSTM layers, {args.steps} step(s) per stream, 1 thread; "
        f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'hidden':>6} {'streams':>7} {'default us':>11} {'fused us':>9} {'fused speed-up':>15}")
    for hidden in hiddens:
        torch.manual_seed(0)
        model = hs.SequenceModel(2, 2, [hs.LSTM(hidden), hs.LSTM(hidden)])
        candidates = {}
        for backend in ("torch", "fused"):
            try:
                candidates[backend] = ServedModel.build(model, None, ["a", "b"], ["a", "b"], backend=backend)
            except hs.ConfigError as e:
                print(f"# {backend}: {e}")
        for batch in batches:
            rng = np.random.default_rng(0)
            xs = [rng.standard_normal((args.steps, 2)).astype(np.float32) for _ in range(batch)]
            served = next(iter(candidates.values()))
            starts = torch.from_numpy(rng.uniform(-0.5, 0.5, (batch, served.state_width)).astype(np.float32))
            fresh = np.zeros(batch, dtype=bool)
            calls = max(1, 2000 // batch) if not args.tiny else 1
            times: dict[str, list[float]] = {name: [] for name in candidates}
            for s in candidates.values():
                _time(s, starts, fresh, xs, calls)  # warm-up
            for _ in range(repeats):
                for name, s in candidates.items():  # interleaved, so load drifts hit both alike
                    times[name].append(_time(s, starts, fresh, xs, calls))
            med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
            fused = med.get("fused", float("nan"))
            ratio = med["torch"] / fused if "fused" in med else float("nan")
            print(f"{hidden:>6} {batch:>7} {med['torch']:>11.1f} {fused:>9.1f} {ratio:>14.2f}x")


if __name__ == "__main__":
    main()

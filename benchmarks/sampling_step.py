"""The sampling loop's step for LSTM stacks: BLAS product + C kernel pass against the others.

    python -m benchmarks.sampling_step              # 1 thread, the shapes below
    python -m benchmarks.sampling_step --threads 2 --rounds 5

``hs.sample_paths`` can step an LSTM stack in three ways (``hiddenstate.paths._stepper``): the
cell functions (``torch.lstm_cell``), the RNN kernel (oneDNN on the CPU, one call per group of
same-sized layers) and one matrix product of ``[h, x]`` per layer (oneDNN's for large ones,
else the BLAS) followed by one pass of the C kernel for the activations and the cell update,
which it takes for every LSTM stack when the kernel builds. This times 48 steps of a 2-layer
Student-t LSTM with 13 inputs (the probabilistic benchmark's shape) for each, in interleaved
rounds in one process, and prints each one's median beside the one the loop picks.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

import hiddenstate as hs
from hiddenstate import paths
from hiddenstate.forecast import warm

SHAPES = [(8, 100), (8, 700), (40, 16), (40, 100), (40, 700), (40, 2800), (64, 700), (128, 700)]  # (hidden, rows)


@contextlib.contextmanager
def _forced(kind: str) -> Iterator[None]:
    """Make the loop take ``kind``'s step, whatever the shape: 'gemm', 'cell' or 'kernel'."""
    saved = paths._pointwise_ok, paths._CELL_ROWS
    if kind == "gemm":
        paths._pointwise_ok = lambda *a: True
    else:
        paths._pointwise_ok = lambda *a: False
        paths._CELL_ROWS = 10**9 if kind == "cell" else 0
    try:
        yield
    finally:
        paths._pointwise_ok, paths._CELL_ROWS = saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument(
        "--shapes", default="", help="hidden x rows pairs to time instead of the defaults, e.g. 40x700,64x700"
    )
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in pair.split("x")) for pair in args.shapes.split(",")] if args.shapes else SHAPES
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, {args.threads} thread(s)")
    print("| hidden | rows | cell functions | RNN kernel | product + C pass | picked | picked vs best other |")
    print("|---|---|---|---|---|---|---|")
    for hidden, rows in shapes:
        torch.manual_seed(0)
        model = hs.SequenceModel(13, 1, [hs.LSTM(hidden), hs.LSTM(hidden)], likelihood="studentt").eval()
        series = 7 if rows % 7 == 0 else 1
        state = warm(model, torch.randn(series, 20, 13))
        last, ahead = torch.randn(series, 13), torch.randn(series, args.horizon - 1, 13)

        per_row = rows // series

        def run(model: Any = model, state: Any = state, last: Any = last, ahead: Any = ahead, n: int = per_row) -> None:
            paths.sample_paths(model, state, last, args.horizon, n, seed=0, target_index=[0], ahead=ahead)

        times: dict[str, list[float]] = {"cell": [], "kernel": [], "gemm": []}
        for kind in times:  # warm each once
            with _forced(kind):
                run()
        for _ in range(args.rounds):
            for kind in times:
                with _forced(kind):
                    t0 = time.perf_counter()
                    run()
                    times[kind].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        reps = state.select(torch.arange(series).repeat(rows // series))
        picked = {"cell_step": "cell", "kernel_step": "kernel", "gemm_step": "gemm"}[
            paths._stepper(model, reps).__name__
        ]
        best_other = min(v for k, v in med.items() if k != picked)
        print(
            f"| {hidden} | {rows} | {med['cell']:.1f} ms | {med['kernel']:.1f} ms | {med['gemm']:.1f} ms | "
            f"{picked} | {best_other / med[picked]:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()

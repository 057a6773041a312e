"""Run every benchmark scenario, one after the other.

    python -m benchmarks                    # training, inference, streaming, threads, profile, GPU
    python -m benchmarks --plot             # and the batch/hidden-size sweep (docs/performance.png)
    python -m benchmarks --tiny --no-keras  # minimal sizes: proves every script runs

``--repeats``, ``--no-keras`` and ``--no-fused`` pass through to each script. The service
benchmark, ``benchmarks/serve.py``, needs ``wrk`` and runs on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu, inference, profile_seed, streaming_latency, sweep, threads, train_throughput

SCENARIOS = (train_throughput, inference, streaming_latency, threads, profile_seed, gpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help="timed repeats per candidate (each script's default if unset)")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-fused", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="minimal sizes, one repeat, in-process")
    parser.add_argument("--plot", action="store_true", help="also run the sweep and write docs/performance.png")
    args = parser.parse_args(argv)
    passed = [f"--{name}" for name in ("no-keras", "no-fused", "tiny") if getattr(args, name.replace("-", "_"))]
    if args.repeats is not None:
        passed += ["--repeats", str(args.repeats)]
    for module in (*SCENARIOS, sweep) if args.plot else SCENARIOS:
        module.main(passed)
        print(flush=True)


if __name__ == "__main__":
    main()

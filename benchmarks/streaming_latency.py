"""Streaming inference: the latency of one step, for one stream and for 1,000 streams batched.

    python -m benchmarks.streaming_latency                   # seed model; 1 and 1,000 streams
    python -m benchmarks.streaming_latency --streams 1,100,1000

Each call advances every stream by one step (``x`` of shape ``(streams, 1, n_in)``) and carries
the state, as a server does between observations: a hand-written ``nn.LSTM`` stack,
``hs.Stateful`` on the default and the fused backend (and as it ran before, one
``nn.LSTM`` module call per layer), and a stateful Keras model's
``predict_on_batch``. Candidates run interleaved, each in its own process; the table gives the
median and 99th percentile of the per-call latency over every repeat, the stream-steps per
second that the median implies, and peak RSS.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import candidates as c
from benchmarks.common import (
    Config,
    Result,
    Spec,
    base_parser,
    environment,
    keras_available,
    measure,
    pick_configs,
    rate,
    ratio,
    rss,
    table,
)

HAND = "hand-written PyTorch"
HS = "hs.Stateful"
FUSED = "hs.Stateful (fused)"
LAYERED = "hs.Stateful, per-layer nn.LSTM calls (before)"
KERAS = "Keras 3 / TF, stateful"
HEADERS = [
    "config",
    "streams",
    "candidate",
    "median latency",
    "p99 latency",
    "vs hand (median)",
    "stream-steps/s",
    "peak RSS",
]


def specs(cfg: Config, streams: int, calls: int, *, keras: bool, fused: bool, threads: int | None = None) -> list[Spec]:
    kw = {"cfg": cfg, "streams": streams, "calls": calls, "threads": threads}
    out = [Spec(HAND, c.HandStream, kw), Spec(HS, c.HsStream, kw)]
    out.append(Spec(LAYERED, c.HsStream, {**kw, "backend": "layered"}))
    if fused:
        out.append(Spec(FUSED, c.HsStream, {**kw, "backend": "fused"}))
    if keras:
        out.append(Spec(KERAS, c.KerasStream, kw))
    return out


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def rows(cfg: Config, streams: int, results: dict[str, Result]) -> list[list[Any]]:
    med = {k: statistics.median(r.per_call) for k, r in results.items()}
    out = []
    for label, r in results.items():
        calls = sorted(r.per_call)
        p99 = calls[min(len(calls) - 1, int(0.99 * len(calls)))]
        out.append(
            [
                cfg.name,
                f"{streams:,}",
                label,
                _us(med[label]),
                _us(p99),
                ratio(med[HAND], med[label]),  # > 1: faster than the hand-written loop
                rate(streams / med[label]),
                rss(r.rss_mb),
            ]
        )
    return out


def main(argv: list[str] | None = None) -> dict[int, dict[str, Result]]:
    parser = base_parser(__doc__.splitlines()[0], "seed")
    parser.add_argument("--streams", default="1,1000", help="comma-separated stream counts (default: 1,1000)")
    parser.add_argument("--calls", type=int, default=200, help="steps per repeat (default: 200)")
    args = parser.parse_args(argv)
    use_keras = keras_available() and not args.no_keras
    repeats, isolate = (1, False) if args.tiny else (args.repeats, True)
    stream_counts = [2] if args.tiny else [int(s) for s in args.streams.split(",")]
    calls = 3 if args.tiny else args.calls
    print(f"## Streaming latency\n\n{environment()}\n")
    found, all_rows = {}, []
    for cfg in pick_configs(args.configs, args.tiny):
        for streams in stream_counts:
            print(f"- {cfg.name} model ({' + '.join(f'LSTM({h})' for h in cfg.layers)}), {streams:,} streams, "
                  f"{calls} steps per repeat", flush=True)  # fmt: skip
            found[streams] = results = measure(
                specs(cfg, streams, calls, keras=use_keras, fused=not args.no_fused, threads=args.threads),
                repeats=repeats,
                isolate=isolate,
            )
            all_rows += rows(cfg, streams, results)
    print()
    print(table(HEADERS, all_rows))
    print(f"\nper-call latency over {repeats} interleaved repeats of {calls} steps; peak RSS of each process")
    return found


if __name__ == "__main__":
    main()

"""Inference throughput over lane-ordered chunks, the state carried from chunk to chunk.

    python -m benchmarks.inference                          # seed, wide and long
    python -m benchmarks.inference --configs seed --repeats 11

Candidates: a hand-written ``nn.LSTM`` stack under ``torch.inference_mode``, ``hs.Stateful`` on
the default and the fused backend (and as it ran before, one ``nn.LSTM`` module call per
layer), and Keras ``predict_on_batch`` with stateful LSTMs. Each runs in its own process,
interleaved with the others; the table gives median sample-steps/s and peak RSS.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import candidates as c
from benchmarks.common import (
    THROUGHPUT_HEADERS,
    Config,
    Result,
    Spec,
    base_parser,
    environment,
    keras_available,
    measure,
    pick_configs,
    table,
    throughput_rows,
    trainer_threads,
)

HAND = "hand-written PyTorch"
HS = "hs.Stateful"
FUSED = "hs.Stateful (fused)"
LAYERED = "hs.Stateful, per-layer nn.LSTM calls (before)"
KERAS = "Keras 3 / TF, stateful"


def specs(cfg: Config, *, keras: bool, fused: bool, threads: int | None = None) -> list[Spec]:
    kw = {"cfg": cfg, "threads": threads}
    out = [Spec(HAND, c.HandInfer, kw), Spec(HS, c.HsInfer, kw)]
    out.append(Spec(LAYERED, c.HsInfer, {**kw, "backend": "layered"}))
    if fused:
        out.append(Spec(FUSED, c.HsInfer, {**kw, "backend": "fused"}))
    if keras:
        out.append(Spec(KERAS, c.KerasInfer, kw))
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, Result]]:
    args = base_parser(__doc__.splitlines()[0], "seed,wide,long").parse_args(argv)
    use_keras = keras_available() and not args.no_keras
    repeats, isolate = (1, False) if args.tiny else (args.repeats, True)
    print(f"## Inference throughput\n\n{environment()}\n")
    found, all_rows = {}, []
    for cfg in pick_configs(args.configs, args.tiny):
        print(f"- {cfg.name}: {cfg.describe}, {cfg.chunks} chunks per repeat, "
              f"{args.threads or trainer_threads(cfg.layers)} torch thread(s)", flush=True)  # fmt: skip
        found[cfg.name] = results = measure(
            specs(cfg, keras=use_keras, fused=not args.no_fused, threads=args.threads), repeats=repeats, isolate=isolate
        )
        all_rows += throughput_rows(cfg, results, HAND, KERAS)
    print()
    print(table(THROUGHPUT_HEADERS, all_rows))
    print(f"\nmedian of {repeats} interleaved repeats; peak RSS of each candidate's own process")
    return found


if __name__ == "__main__":
    main()

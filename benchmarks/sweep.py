"""Training throughput against batch size and hidden size, plotted: hs, hand-written PyTorch, Keras.

    python -m benchmarks.sweep                          # ~10 minutes on 2 cores; writes docs/performance.png
    python -m benchmarks.sweep --repeats 5 --out /tmp/sweep.png

Two panels: batch sizes 1 to 256 with two LSTM(8) layers, and hidden sizes 8 to 128 (two layers
of that size) at batch 64; 96 steps per chunk, 2 -> 2, dropout 0.2, Adam, MSE. Each candidate
keeps one worker process for the whole sweep; at every point the candidates run interleaved and
the plot shows the median. The figures also go to a JSON file beside the PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import candidates as c
from benchmarks.common import (
    Config,
    Spec,
    Worker,
    base_parser,
    environment,
    keras_available,
    measure,
    rate,
    table,
)

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 4, 16, 64, 256)
HIDDENS = (8, 16, 32, 64, 128)
STYLE = {  # label: (factory, extra kwargs, matplotlib format)
    "hand-written PyTorch": (c.HandTrain, {}, "s-"),
    "hs.Trainer": (c.HsTrain, {}, "o-"),
    "hs.Trainer, fused backend": (c.HsTrain, {"backend": "fused"}, "o--"),
    "Keras 3 / TF, stateful": (c.KerasTrain, {}, "^:"),
}


def _config(batch: int, hidden: int, steps: int = 96, budget: int = 100_000) -> Config:
    chunks = max(2, min(20, round(budget / (batch * steps))))  # about `budget` sample-steps a repeat
    return Config(f"b{batch}-h{hidden}", batch=batch, steps=steps, layers=(hidden, hidden), chunks=chunks)


def sweep(
    points: list[Config], labels: list[str], repeats: int, isolate: bool, threads: int | None
) -> list[dict[str, Any]]:
    workers = {label: Worker(isolate) for label in labels}
    rows = []
    try:
        for cfg in points:
            print(f"- {cfg.name}: {cfg.describe}", flush=True)
            specs = [Spec(lb, STYLE[lb][0], {"cfg": cfg, "threads": threads, **STYLE[lb][1]}) for lb in labels]
            results = measure(specs, repeats=repeats, isolate=isolate, workers=workers)
            rows.append({"batch": cfg.batch, "hidden": cfg.layers[0], **{k: r.rate for k, r in results.items()}})
    finally:
        for w in workers.values():
            w.close()
    return rows


def _short(v: float) -> str:
    """Axis labels: 20k, 500k, 1M."""
    return f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}"


def plot(by_batch: list[dict[str, Any]], by_hidden: list[dict[str, Any]], labels: list[str], out: Path, note: str):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, rows, key, title in (
        (axes[0], by_batch, "batch", "two LSTM(8) layers: against batch size"),
        (axes[1], by_hidden, "hidden", f"batch {by_hidden[0]['batch']}: against hidden size (two layers)"),
    ):
        for label in labels:
            ax.plot([r[key] for r in rows], [r[label] for r in rows], STYLE[label][2], label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([r[key] for r in rows], [str(r[key]) for r in rows])
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _short(v)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("batch size (lanes)" if key == "batch" else "hidden size")
        ax.set_ylabel("training sample-steps / s")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Training throughput (96 steps, 2->2, dropout, Adam, MSE), median of interleaved repeats\n{note}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = base_parser(__doc__.splitlines()[0], "")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.png", help="the PNG to write")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    labels = [lb for lb in STYLE if not (lb.startswith("Keras") and (args.no_keras or not keras_available()))]
    if args.no_fused:
        labels.remove("hs.Trainer, fused backend")
    isolate, repeats = (False, 1) if args.tiny else (True, args.repeats)
    threads = f"{args.threads} thread(s) for every candidate" if args.threads else "threads as hs.Trainer picks"
    env = f"{environment()} · {threads}"
    print(f"## Sweep: training throughput against batch size and hidden size\n\n{env}\n")
    if args.tiny:
        by_batch = sweep([_config(b, 3, steps=4, budget=16) for b in (1, 2)], labels, repeats, isolate, args.threads)
        by_hidden = sweep([_config(2, h, steps=4, budget=16) for h in (2, 3)], labels, repeats, isolate, args.threads)
    else:
        by_batch = sweep([_config(b, 8) for b in BATCHES], labels, repeats, isolate, args.threads)
        by_hidden = sweep([_config(64, h) for h in HIDDENS], labels, repeats, isolate, args.threads)
    for name, rows, key in (("batch size", by_batch, "batch"), ("hidden size", by_hidden, "hidden")):
        print(f"\nAgainst {name} (sample-steps/s):\n")
        print(table([key, *labels], [[r[key], *(rate(r[lb]) for lb in labels)] for r in rows]))
    plot(by_batch, by_hidden, labels, args.out, env)
    found = {"environment": env, "by_batch": by_batch, "by_hidden": by_hidden}  # type: ignore[dict-item]
    args.out.with_suffix(".json").write_text(json.dumps(found, indent=1) + "\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.json').name}")
    return found


if __name__ == "__main__":
    main()

"""Does ``hs.Trainer`` pick the right number of CPU threads? One thread against every core.

    python -m benchmarks.threads

With ``TrainConfig.threads=None`` the Trainer uses one thread when every hidden size is at most
32 (such models are bound by op dispatch, and a second thread only adds synchronisation) and
every core otherwise. This trains each configuration with ``threads=1`` and with ``threads=N``
(N = the cores this process may use), interleaved, each in its own process, and says which was
faster and whether that is what the Trainer picks.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import candidates as c
from benchmarks.common import (
    SEED,
    TINY,
    WIDE,
    Config,
    Result,
    Spec,
    base_parser,
    cores,
    environment,
    measure,
    rate,
    table,
    trainer_threads,
)

CONFIGS = [
    SEED,
    Config("b10-h32", batch=10, steps=96, layers=(32, 32), chunks=10),
    Config("b64-h32", batch=64, steps=96, layers=(32, 32), chunks=6),
    Config("b64-h64", batch=64, steps=96, layers=(64, 64), chunks=6),
    WIDE,
]
HEADERS = ["config", "layers", "1 thread", "{n} threads", "faster", "Trainer picks", "agrees"]


def main(argv: list[str] | None = None) -> dict[str, dict[str, Result]]:
    parser = base_parser(__doc__.splitlines()[0], ",".join(c.name for c in CONFIGS))
    args = parser.parse_args(argv)
    n = cores()
    repeats, isolate = (1, False) if args.tiny else (args.repeats, True)
    configs = [TINY] if args.tiny else [cfg for cfg in CONFIGS if cfg.name in args.configs.split(",")]
    print(f"## Thread count\n\n{environment()}\n")
    if n == 1:
        print("Only one core is available to this process; nothing to compare.")
        return {}
    found, rows = {}, []
    for cfg in configs:
        print(f"- {cfg.name}: {cfg.describe}", flush=True)
        specs = [Spec(f"{t} thread(s)", c.HsTrain, {"cfg": cfg, "threads": t}) for t in (1, n)]
        found[cfg.name] = results = measure(specs, repeats=repeats, isolate=isolate)
        one, many = (results[s.label].rate for s in specs)
        best = 1 if one >= many else n
        pick = trainer_threads(cfg.layers)
        layers = " + ".join(str(h) for h in cfg.layers)
        rows.append([cfg.name, layers, rate(one), rate(many), f"{best} ({max(one, many) / min(one, many):.2f}x)",
                     pick, "yes" if pick == best else "no"])  # fmt: skip
    print()
    print(table([h.format(n=n) for h in HEADERS], rows))
    print(f"\nhs.Trainer sample-steps/s, median of {repeats} interleaved repeats")
    return found


if __name__ == "__main__":
    main()

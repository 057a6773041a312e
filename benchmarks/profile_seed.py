"""Where a training chunk's time goes, for the seed configuration: a profile of each candidate.

    python -m benchmarks.profile_seed

For the hand-written loop (``torch.optim.Adam()``) and the ``hs`` model on the default and the
fused backend (with the fused Adam that ``hs.Trainer`` uses), it prints (1) the CPU time of each
phase of a chunk (forward, loss, backward, optimizer step), timed directly, median over the
chunks, and (2) the top operators from ``torch.profiler``, with how many operator calls a chunk
makes. The seed configuration is bound by dispatch: count the calls, not the FLOPs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F  # noqa: N812

from benchmarks.candidates import HandModel
from benchmarks.common import SEED, TINY, Config, base_parser, environment, lane_chunks, table, trainer_threads

PHASES = ("forward", "loss", "backward", "optimizer")


def _hand(cfg: Config) -> tuple[Callable[..., Any], Any]:
    model = HandModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    hx: list[Any] = [None] * len(model.rnns)

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal hx
        y, new = model(x, hx)
        hx = [tuple(t.detach() for t in h) for h in new]
        return y

    return forward, opt


def _hs(cfg: Config, backend: str, fused_adam: bool) -> tuple[Callable[..., Any], Any]:
    import hiddenstate as hs

    model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout)
    model.rnn.set_backend(backend)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=fused_adam or None)
    state = None

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal state
        y, new = model(x, state)
        state = new.detach()
        return y

    return forward, opt


def phases(built: dict[str, Any], xs: list[Any], ys: list[Any], rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU microseconds of each phase of a chunk, per candidate; the candidates take
    turns chunk by chunk, so load from elsewhere hits them alike."""
    times = {label: {p: [] for p in PHASES} for label in built}
    for _ in range(rounds):
        for x, y in zip(xs, ys, strict=True):
            for label, (forward, opt) in built.items():
                t0 = time.process_time()
                y_hat = forward(x)
                t1 = time.process_time()
                loss = F.mse_loss(y_hat, y)
                t2 = time.process_time()
                opt.zero_grad()
                loss.backward()
                t3 = time.process_time()
                opt.step()
                t4 = time.process_time()
                for p, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[label][p].append(dt * 1e6)
    return {label: {p: statistics.median(v) for p, v in t.items()} for label, t in times.items()}


def operators(forward: Callable[..., Any], opt: Any, xs: list[Any], ys: list[Any], top: int) -> tuple[str, float]:
    """The profiler's top operators by self CPU time over one pass, and operator calls per chunk."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in zip(xs, ys, strict=True):
            loss = F.mse_loss(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    events = prof.key_averages()
    calls = sum(e.count for e in events if e.key.startswith("aten::")) / len(xs)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in events) or 1
    text = table(
        ["operator", "calls per chunk", "self CPU share"],
        [[e.key[:60], f"{e.count / len(xs):.1f}", f"{100 * e.self_cpu_time_total / total:.1f}%"] for e in rows],
    )
    return text, calls


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = base_parser(__doc__.splitlines()[0], "seed")
    parser.add_argument("--top", type=int, default=8, help="operators listed per candidate (default: 8)")
    args = parser.parse_args(argv)
    cfg = TINY if args.tiny else SEED
    rounds = 1 if args.tiny else max(1, args.repeats // 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(trainer_threads(cfg.layers))
    _, xs, ys = lane_chunks(cfg)
    candidates = {
        "hand-written PyTorch": lambda: _hand(cfg),
        "hs, default backend": lambda: _hs(cfg, "torch", True),
    }
    if not args.no_fused:
        candidates["hs, fused backend"] = lambda: _hs(cfg, "fused", True)
    print(f"## Profile of the {cfg.name} configuration ({cfg.describe})\n\n{environment()}\n")
    try:
        built = {}
        for label, make in candidates.items():
            torch.manual_seed(0)
            built[label] = make()
        phases(built, xs[:2], ys[:2], 1)  # warm-up
        found = phases(built, xs, ys, rounds)
        rows = [[label, *(f"{v[p]:,.0f}" for p in PHASES), f"{sum(v.values()):,.0f}"] for label, v in found.items()]
        print("CPU microseconds per chunk, median over the chunks:\n")
        print(table(["candidate", *PHASES, "total"], rows))
        for label, (forward, opt) in built.items():
            text, calls = operators(forward, opt, xs, ys, args.top)
            print(f"\n### {label}: {calls:.0f} operator calls per chunk\n")
            print(text)
    finally:
        torch.set_num_threads(threads)
    return found


if __name__ == "__main__":
    main()

"""The GPU path: hs against raw ``nn.LSTM`` on cuDNN, in fp32, bf16 and fp16, and which kernels ran.

    python -m benchmarks.gpu                   # needs CUDA; prints a note and exits without it

For each configuration and precision it trains (forward, MSE, backward, fused Adam) a raw
``nn.LSTM`` stack and the same stack as ``hs.SequenceModel``, interleaved in one process
(``torch.cuda.synchronize`` around every repeat), and reports sample-steps/s and the ratio; the
target is hs >= 0.95x raw. bf16/fp16 run under ``hiddenstate.train.precision.autocast`` (fp16 with a
``GradScaler``). It then lists the cuDNN RNN kernels of one step of each, to show that cuDNN runs
the whole sequence per layer and whether it picked a persistent kernel.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F  # noqa: N812

from benchmarks.candidates import HandModel
from benchmarks.common import SEED, WIDE, Config, base_parser, environment, rate, table

CONFIGS = {
    "seed": SEED,
    "wide": WIDE,
    "b256-h128": Config("b256-h128", batch=256, steps=96, layers=(128, 128), chunks=10),
}


def _trainer(model: torch.nn.Module, forward: Any, precision: str) -> Any:
    from hiddenstate.train import precision as fast

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = fast.grad_scaler(precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with fast.autocast("cuda", precision):
            loss = F.mse_loss(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def candidates(cfg: Config, precision: str) -> dict[str, Any]:
    import hiddenstate as hs

    torch.manual_seed(0)
    raw = HandModel(cfg).cuda()
    raw_state: list[Any] = [None] * len(raw.rnns)

    def raw_forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal raw_state
        y, new = raw(x, raw_state)
        raw_state = [tuple(t.detach() for t in h) for h in new]
        return y

    model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout).cuda()
    state = None

    def hs_forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal state
        y, new = model(x, state)
        state = new.detach()
        return y

    return {
        "raw nn.LSTM": _trainer(raw, raw_forward, precision),
        "hs.SequenceModel": _trainer(model, hs_forward, precision),
    }


def measure(cfg: Config, precision: str, repeats: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(cfg.batch, cfg.steps, cfg.n_in, generator=gen).cuda() for _ in range(cfg.chunks)]
    ys = [torch.randn(cfg.batch, cfg.steps, cfg.n_in, generator=gen).cuda() for _ in range(cfg.chunks)]
    steps = candidates(cfg, precision)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(repeats + 1):
        for label, step in steps.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            for x, y in zip(xs, ys, strict=True):
                step(x, y)
            torch.cuda.synchronize()
            if r:  # the first round warms up cuDNN's plans
                times[label].append(time.perf_counter() - start)
    return {k: cfg.sample_steps / statistics.median(v) for k, v in times.items()}


def kernels(cfg: Config, precision: str) -> list[str]:
    """Names of the GPU kernels with 'rnn' or 'lstm' or 'persist' in them, for one hs step."""
    from torch.profiler import ProfilerActivity, profile

    step = candidates(cfg, precision)["hs.SequenceModel"]
    x = torch.randn(cfg.batch, cfg.steps, cfg.n_in, device="cuda")
    step(x, x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(x, x)
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if any(s in n.lower() for s in ("rnn", "lstm", "persist")))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0], ",".join(CONFIGS))
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    args = parser.parse_args(argv)
    print(f"## GPU\n\n{environment()}\n")
    if not torch.cuda.is_available():
        print("CUDA is not available here; nothing measured.")
        return {}
    print(f"device: {torch.cuda.get_device_name()} · cuDNN {torch.backends.cudnn.version()}\n")
    rows, found = [], {}
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        for precision in args.precisions.split(","):
            found[name, precision] = r = measure(cfg, precision, args.repeats)
            raw, ours = r["raw nn.LSTM"], r["hs.SequenceModel"]
            rows.append(
                [name, precision, rate(raw), rate(ours), f"{ours / raw:.2f}x", ", ".join(kernels(cfg, precision))]
            )
    print(table(["config", "precision", "raw nn.LSTM", "hs", "hs / raw", "RNN kernels"], rows))
    return found


if __name__ == "__main__":
    main()

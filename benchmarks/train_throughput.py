"""Training throughput: ``hs.Trainer`` against a hand-written PyTorch TBPTT loop, and Keras.

    python -m benchmarks.train_throughput                  # seed, wide and long; a few minutes
    python -m benchmarks.train_throughput --configs seed --repeats 11

Every candidate trains on the same lane-ordered chunks of one synthetic series (Adam, MSE,
dropout between the layers, state carried and detached every chunk); the Trainer runs with
``clip=None`` so that it does the hand loop's work. Candidates run interleaved, each in its own
process (see ``common.py``); the table gives median sample-steps/s (lanes x steps per second),
the ratio to the hand loop by wall clock and by CPU time, and each one's peak RSS.

- ``hand-written PyTorch`` uses ``torch.optim.Adam()`` as most loops do; ``hand-written, fused
  Adam`` passes ``fused=True``, as ``hs.Trainer`` does. ``hs.Trainer, plain Adam`` gives the
  Trainer the hand loop's plain Adam: the same optimizer on both sides.
- ``hs.Trainer, per-layer nn.LSTM calls (before)``: plain Adam and one ``nn.LSTM`` module call
  per layer, as ``StackedRNN`` ran before it called the kernels directly and ran runs of
  same-sized layers in one multi-layer call.
- ``hs.Trainer, fused backend``: ``TrainConfig(backend="fused")`` (the fast option).

It ends with an equivalence check: one epoch of the seed configuration from the same weights
and seed through the hand loop, the Trainer, and the Trainer on the fused backend.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import candidates as c
from benchmarks.common import (
    SEED,
    THROUGHPUT_HEADERS,
    Config,
    Result,
    Spec,
    base_parser,
    environment,
    keras_available,
    lane_chunks,
    measure,
    pick_configs,
    table,
    throughput_rows,
    trainer_threads,
    with_chunks,
)

HAND = "hand-written PyTorch"
HAND_ADAM = "hand-written, fused Adam"
HS = "hs.Trainer"
HS_PLAIN = "hs.Trainer, plain Adam"
HS_LAYERED = "hs.Trainer, per-layer nn.LSTM calls (before)"
FUSED = "hs.Trainer, fused backend"
KERAS = "Keras 3 / TF, stateful"


def specs(cfg: Config, *, keras: bool, fused: bool, threads: int | None = None) -> list[Spec]:
    kw = {"cfg": cfg, "threads": threads}
    out = [Spec(HAND, c.HandTrain, kw), Spec(HAND_ADAM, c.HandTrain, {**kw, "fused_adam": True})]
    out.append(Spec(HS, c.HsTrain, kw))
    out.append(Spec(HS_PLAIN, c.HsTrain, {**kw, "plain_adam": True}))
    out.append(Spec(HS_LAYERED, c.HsTrain, {**kw, "backend": "layered", "plain_adam": True}))
    if fused:
        out.append(Spec(FUSED, c.HsTrain, {**kw, "backend": "fused"}))
    if keras:
        out.append(Spec(KERAS, c.KerasTrain, kw))
    return out


def equivalence(cfg: Config = SEED) -> list[list[Any]]:
    """One epoch from identical weights and seed: the hand loop, the Trainer, the fused Trainer.

    Returns rows of (run, mean loss, max |weight - hand loop's weight|)."""
    import hiddenstate as hs

    cfg = with_chunks(cfg, min(cfg.chunks, 8))
    threads = torch.get_num_threads()
    torch.set_num_threads(trainer_threads(cfg.layers))
    try:
        torch.manual_seed(0)
        ref = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout)
        init = {k: v.clone() for k, v in ref.state_dict().items()}
        hand = c.HandTrain(cfg, fused_adam=True)  # the Trainer's optimizer
        _copy_into_hand(init, hand.model, len(cfg.layers))
        hand.run()
        hand_w = _hand_weights(hand.model, len(cfg.layers))
        out = [["hand-written loop, fused Adam", f"{hand.extra['loss']:.6f}", "0 (reference)"]]
        batches, _, _ = lane_chunks(cfg)
        for backend in ("torch", "fused"):
            model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers], dropout=cfg.dropout)
            model.load_state_dict(init)
            model.rnn.set_backend(backend)
            trainer = hs.Trainer(model, hs.TrainConfig(epochs=1, lr=cfg.lr, clip=None, progress=False))
            loss = trainer.fit(batches).train_loss[-1]
            diff = max(float((model.state_dict()[k] - v).abs().max()) for k, v in hand_w.items())
            out.append([f"hs.Trainer, backend {backend!r}", f"{loss:.6f}", f"{diff:.1e}"])
        return out
    finally:
        torch.set_num_threads(threads)


def _copy_into_hand(init: dict[str, torch.Tensor], model: c.HandModel, n_layers: int) -> None:
    with torch.no_grad():
        for name, value in _hand_names(model, n_layers).items():
            value.copy_(init[name])


def _hand_weights(model: c.HandModel, n_layers: int) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in _hand_names(model, n_layers).items()}


def _hand_names(model: c.HandModel, n_layers: int) -> dict[str, torch.Tensor]:
    """The hand model's parameters under the hs.SequenceModel's state_dict names."""
    names = {"head.weight": model.head.weight, "head.bias": model.head.bias}
    for i in range(n_layers):
        rnn, j = (model.rnns[0], i) if len(model.rnns) == 1 else (model.rnns[i], 0)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            names[f"rnn.cells.{i}.{kind}_l0"] = getattr(rnn, f"{kind}_l{j}")
    return names


def main(argv: list[str] | None = None) -> dict[str, dict[str, Result]]:
    args = base_parser(__doc__.splitlines()[0], "seed,wide,long").parse_args(argv)
    use_keras = keras_available() and not args.no_keras
    repeats, isolate = (1, False) if args.tiny else (args.repeats, True)
    print(f"## Training throughput\n\n{environment()}\n")
    if not use_keras:
        print("(Keras left out: " + ("--no-keras" if args.no_keras else "keras/tensorflow not installed") + ")\n")
    all_rows, found = [], {}
    for cfg in pick_configs(args.configs, args.tiny):
        threads = args.threads or trainer_threads(cfg.layers)
        print(f"- {cfg.name}: {cfg.describe}, {cfg.chunks} chunks per repeat, {threads} torch thread(s)", flush=True)
        found[cfg.name] = results = measure(
            specs(cfg, keras=use_keras, fused=not args.no_fused, threads=args.threads), repeats=repeats, isolate=isolate
        )
        all_rows += throughput_rows(cfg, results, HAND, KERAS)
    print()
    print(table(THROUGHPUT_HEADERS, all_rows))
    print(f"\nmedian of {repeats} interleaved repeats; peak RSS of each candidate's own process\n")
    check = equivalence(pick_configs("seed", args.tiny)[0])
    print("Equivalence, one epoch from the same weights and seed:\n")
    print(table(["run", "mean train loss", "max abs weight difference to the hand loop"], check))
    return found


if __name__ == "__main__":
    main()

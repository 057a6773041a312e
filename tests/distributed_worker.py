"""A user's training script for tests/test_distributed.py: run it plainly or under torchrun.

It trains a small stateful model with ``hs.Trainer.fit`` and, on rank 0 (or in one process),
writes ``--result`` (safetensors: the weights as ``weight.*``, every lane's state as
``state.*``, the last validation and the test loss) and, with ``--run-dir``, saves the run there.
Nothing in it knows about ranks except the test hooks: ``--kill-rank`` (write that rank's pid to
``PIDS/rank-R-restart-N`` and slow the epochs down, so the test can SIGKILL it mid-run) and
``--raise-rank`` (raise on that rank after its first epoch) and ``--fast-clock-rank`` (that
rank's Trainer reads a clock that runs 10,000 times fast, so its ``max_minutes`` runs out first).
"""

from __future__ import annotations

import argparse
import os
import time
import types
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

import hiddenstate as hs
from hiddenstate.data.scaled import ScaledBatches
from hiddenstate.train import trainer as trainer_module


def batches(ragged: bool, seed: int, scaled: bool = False) -> hs.StatefulBatches | ScaledBatches:
    rng = np.random.default_rng(seed)
    lengths = [61, 47, 33, 58, 20] if ragged else [50, 50, 50, 50]  # ragged: 5 lanes end apart
    series = [rng.standard_normal((n, 2)).cumsum(0) * 0.1 for n in lengths]
    lanes = hs.StatefulBatches(series, series, batch_size=len(lengths), steps=8, split=False)
    if not scaled:
        return lanes
    return ScaledBatches(lanes, [[10.0**j, 2.0] for j in range(len(lengths))])  # each series its own scale


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ragged", action="store_true")
    p.add_argument("--policy", default="carry")
    p.add_argument("--detach-every", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-rank", type=int)
    p.add_argument("--pids", type=Path)
    p.add_argument("--raise-rank", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--scaled", action="store_true")  # a likelihood head on ScaledBatches
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--fast-clock-rank", type=int)
    p.add_argument("--other-data-rank", type=int)  # that rank gets the other lanes (ragged <-> equal)
    p.add_argument("--each-rank", action="store_true")  # every rank also writes RESULT.rank-R
    p.add_argument("--stop-rank", type=int)  # that rank's callback sets should_stop after epoch 1
    p.add_argument("--ema", type=float)  # TrainConfig.ema
    args = p.parse_args(argv)

    torch.manual_seed(0)
    encode = "encode" in args.policy
    model = hs.SequenceModel(
        2,
        2,
        [hs.LSTM(8), hs.GRU(6)],
        state_encoder="cond:2" if encode else None,
        likelihood="normal" if args.scaled else None,
    )
    config = hs.TrainConfig(
        epochs=args.epochs,
        lr=1e-2,
        progress=False,
        state_policy=args.policy,
        detach_every=args.detach_every,
        device=args.device,
        keep_checkpoints=None,
        max_minutes=args.max_minutes,
        ema=args.ema,
    )
    trainer = hs.Trainer(model, config)
    rank = int(os.environ.get("RANK", "0"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    callbacks = []
    if args.kill_rank == rank:
        args.pids.mkdir(parents=True, exist_ok=True)
        (args.pids / f"rank-{rank}-restart-{restart}").write_text(str(os.getpid()))
    if args.kill_rank is not None:
        callbacks.append(lambda trainer, row: time.sleep(0.4))  # every rank: room to be killed mid-run
    if args.raise_rank == rank:

        def fail(trainer: hs.Trainer, row: dict) -> None:
            raise ValueError(f"planted failure after epoch {row['epoch']}")

        callbacks.append(fail)
    if args.stop_rank == rank:

        def stop(trainer: hs.Trainer, row: dict) -> None:
            trainer.should_stop = True

        callbacks.append(stop)
    train = batches(args.ragged != (args.other_data_rank == rank), seed=0, scaled=args.scaled)
    val, test = batches(args.ragged, seed=1, scaled=args.scaled), batches(args.ragged, seed=2, scaled=args.scaled)
    if args.fast_clock_rank == rank:
        clock = time.perf_counter
        trainer_module.time = types.SimpleNamespace(perf_counter=lambda: clock() * 10_000)  # type: ignore[assignment]
    trainer.fit(train, val, run_dir=args.run_dir, resume=args.resume, callbacks=callbacks)
    test_loss = trainer.evaluate(test)["loss"]  # every rank takes part: the test covers every lane
    if args.each_rank:  # its weights and how many optimizer steps it took
        own = {f"weight.{k}": v.contiguous() for k, v in model.state_dict().items()}
        own["steps"] = torch.tensor(max(int(s["step"]) for s in trainer.optimizer.state.values()))
        args.result.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(own, f"{args.result}.rank-{rank}")
    if rank == 0:
        tensors = {f"weight.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"state.{k}": v for k, v in trainer.lane_state.to_dict().items()})
        tensors["val_loss"] = torch.tensor(trainer.history.val_loss[-1], dtype=torch.float64)
        tensors["test_loss"] = torch.tensor(test_loss, dtype=torch.float64)
        tensors["epoch"] = torch.tensor(trainer.epoch)
        args.result.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.result))
        if args.run_dir is not None:
            layout = trainer.distributed.layout() if trainer.distributed is not None else None
            hs.save_run(
                args.run_dir,
                model,
                scaler=None,
                inputs=["a", "b"],
                targets=["a", "b"],
                train_config=config,
                lane_state=trainer.lane_state,
                distributed=layout,
            )


if __name__ == "__main__":
    main()

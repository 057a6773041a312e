"""Helper for test_crash.py: a fork server whose children train a tiny model until SIGKILLed.

Run as a script, it imports torch once, prints ``ready`` and reads commands from stdin:

- ``train RUN_DIR [nopause]`` forks a child that trains :func:`job` in RUN_DIR (resuming when it
  holds a checkpoint) and prints ``pid N``; when the child ends, by itself or by SIGKILL, it
  prints ``exit N CODE`` (CODE -9 for SIGKILL). ``nopause`` turns off the test-only pause in
  durable writes for that child.
- ``quit`` ends the server.

Forking from a warm process spares each kill the seconds that importing torch takes on a
loaded 2-core machine; every child is still its own process, killed with a real SIGKILL.
Children write their progress (``epoch N``, ``done``, and the write stages that
``HIDDENSTATE_CHECKPOINT_PAUSE`` makes the library print: before each checkpoint file, between
each write and its fsync, between the fsync and the rename) to the server's stdout.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

EPOCHS = 24


def job() -> tuple[Any, Any, Any, Any]:
    """The model, config, train and val batches every child (and the test's reference) uses."""
    import numpy as np
    import torch

    import hiddenstate as hs

    t = np.arange(130.0)
    x = np.stack([np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 40)], axis=1)
    train = hs.StatefulBatches([x], [x], batch_size=4, steps=8)
    val = hs.StatefulBatches([x[:50]], [x[:50]], batch_size=2, steps=8)
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(6), hs.GRU(6)], dropout=0.2)
    config = hs.TrainConfig(epochs=EPOCHS, lr=1e-2, schedule="cosine", progress=False, threads=1, keep_checkpoints=3)
    return model, config, train, val


def _train(run_dir: str) -> None:
    import hiddenstate as hs
    from hiddenstate.runs.run import list_checkpoints

    model, config, train, val = job()

    def report(trainer: Any, row: dict[str, Any]) -> None:
        print(f"epoch {row['epoch']}", flush=True)

    resume = bool(list_checkpoints(run_dir))
    hs.Trainer(model, config).fit(train, val, run_dir=run_dir, resume=resume, callbacks=[report])
    print("done", flush=True)


def serve() -> None:
    os.dup2(1, 2)  # one ordered stream for the test to read
    import torch

    torch.set_num_threads(1)
    import hiddenstate.runs.files
    import hiddenstate.runs.run
    import hiddenstate.train.trainer

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo
    print("ready", flush=True)
    while line := sys.stdin.readline():
        command, *args = line.split()
        if command == "quit":
            break
        pid = os.fork()
        if pid == 0:  # the child: train, then leave without running the server's exit handlers
            code = 0
            try:
                if "nopause" in args:  # the library read the variable at import: switch the hook off itself
                    hiddenstate.runs.files.crash_pause = None
                _train(args[0])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()

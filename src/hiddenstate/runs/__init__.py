"""Run directories and per-epoch checkpoints: safetensors + JSON manifests, atomic writes, no pickle.

:mod:`.run` saves and loads run directories and checkpoints; :mod:`.files` holds the durable-write
and verified-read primitives; :mod:`.listing` checks every field of a manifest or checkpoint
listing before anything is built from it; :mod:`.snapshot` splits RNG and optimizer state into
tensors and JSON.
"""

from __future__ import annotations

from hiddenstate.runs.run import (
    Checkpoint,
    Run,
    list_checkpoints,
    load_checkpoint,
    load_run,
    save_checkpoint,
    save_run,
)

__all__ = ["Checkpoint", "Run", "list_checkpoints", "load_checkpoint", "load_run", "save_checkpoint", "save_run"]

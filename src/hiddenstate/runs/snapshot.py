"""What a checkpoint keeps besides weights, so that a resumed run continues exactly.

The global random generators and the optimizer's state, each split into tensors (for a
safetensors file) and a JSON-safe rest (for ``checkpoint.json``), and put back together on load.
Nothing here touches files; :mod:`hiddenstate.runs.run` writes and verifies the parts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import CheckpointError

__all__ = ["capture_rng", "optimizer_parts", "optimizer_state", "restore_rng", "rng_from_parts", "rng_parts"]


def capture_rng() -> dict[str, Any]:
    """Every global generator's state: torch CPU/CUDA, numpy and Python ``random``."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` (or a loaded checkpoint) holds."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def rng_parts(rng: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split :func:`capture_rng`'s result into uint8 generator tensors and JSON-safe Python/numpy states."""
    tensors = {"torch": rng["torch"]}
    for i, t in enumerate(rng.get("cuda") or ()):
        tensors[f"cuda.{i}"] = t
    version, internal, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def rng_from_parts(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`rng_parts`; KeyError, TypeError or ValueError when ``meta`` is malformed."""
    version, internal, gauss = meta["python"]
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    return {
        "torch": tensors["torch"],
        "cuda": [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))],
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
    }


def optimizer_parts(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into safetensors tensors and a JSON-safe rest."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        plain: dict[str, Any] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                plain[name] = value
        per_param[str(pid)] = plain
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The optimizer ``state_dict`` that :func:`optimizer_parts` split; ``path`` names the file in errors."""
    try:
        state: dict[int, dict[str, Any]] = {int(pid): dict(plain) for pid, plain in meta["state"].items()}
        for key, value in tensors.items():
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
        groups = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
            for g in meta["param_groups"]
        ]
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: malformed optimizer state: {e}") from None
    return {"state": state, "param_groups": groups}

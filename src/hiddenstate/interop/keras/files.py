"""Reading Keras model files: the config JSON and the weight arrays, with h5py only.

Nothing here deserializes a Keras object or runs a Keras layer's code (a Lambda layer's bytecode
is never even read), so it works without Keras installed. Two formats:

* Keras 3 ``.keras``: a zip of ``config.json`` and ``model.weights.h5``. Each layer's variables lie
  in a group ``layers/<path>/vars`` (the cell's in ``.../cell/vars``, a TimeDistributed layer's
  in ``.../layer/vars``), numbered in creation order; the group's ``name`` attribute is the
  layer's own name, so weights are found by layer name, not by position.
* legacy HDF5 ``.h5`` (Keras 3 ``model.save("m.h5")`` and tf.keras 2.x): the config in the root
  attribute ``model_config`` and ``model_weights/<layer name>`` listing ``weight_names`` such as
  ``sequential/lstm/lstm_cell/kernel`` (Keras 3) or ``lstm/lstm_cell/kernel:0`` (tf.keras 2.13-2.15).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import CheckpointError

__all__ = ["KerasFile", "read_keras_file"]

#: The variables of each layer class, in the order Keras creates them (``use_bias=False``: no bias).
VARIABLES = {
    "LSTM": ("kernel", "recurrent_kernel", "bias"),
    "GRU": ("kernel", "recurrent_kernel", "bias"),
    "SimpleRNN": ("kernel", "recurrent_kernel", "bias"),
    "Dense": ("kernel", "bias"),
}


@dataclass
class KerasFile:
    """What a Keras file holds: its model config and each layer's weights by layer name.

    ``weights[layer_name]`` maps ``"kernel"``, ``"recurrent_kernel"``, ``"bias"`` to float32
    arrays; a TimeDistributed layer's entry holds its inner Dense layer's weights.
    """

    path: Path
    format: str  # "keras" or "h5"
    config: dict[str, Any]  # {"class_name": "Sequential" | "Functional", "config": {...}}
    keras_version: str
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable Keras model file ({why})")


def read_keras_file(path: str | os.PathLike[str]) -> KerasFile:
    """Read ``path`` (``.keras`` or ``.h5``); raises CheckpointError naming the file when it is
    missing, truncated or not a Keras model file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: Keras model file not found")
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _read_keras(p)
    if head.startswith(b"\x89HDF"):
        return _read_h5(p)
    raise _bad(p, "neither a .keras zip archive nor an HDF5 file")


def _h5py() -> Any:
    return require("h5py", "keras")


def _read_keras(path: Path) -> KerasFile:
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for needed in ("config.json", "model.weights.h5"):
                if needed not in names:
                    raise _bad(path, f"the archive has no {needed}")
            config = json.loads(archive.read("config.json"))
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
            weights_bytes = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as e:
        raise _bad(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise _bad(path, "config.json holds no model config")
    if not isinstance(config["config"].get("layers", []), list):
        raise _bad(path, "config.json: 'layers' is not a list")
    if not isinstance(meta, dict):
        raise _bad(path, "metadata.json is not an object")
    found = KerasFile(path, "keras", config, str(meta.get("keras_version", "")))
    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as f:
            found.weights = _keras_weights(f, config)
    except (OSError, KeyError, ValueError) as e:
        raise _bad(path, f"model.weights.h5: {e}") from None
    return found


def _layer_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers = config.get("config", {}).get("layers", [])
    return [layer for layer in layers if isinstance(layer, dict)]


def _snake(name: str) -> str:
    """Keras's own ``to_snake_case``: ``SimpleRNN`` -> ``simple_rnn``, ``TimeDistributed`` -> ``time_distributed``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_weights(f: Any, config: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Each layer's variables, found by the ``name`` attribute of its ``vars`` group (Keras >= 3.x
    writes it) or else by the path Keras derives from the class names in order."""
    root = (
        "layers"
        if "layers" in f
        else "_layer_checkpoint_dependencies"
        if "_layer_checkpoint_dependencies" in f
        else None
    )
    groups: dict[str, Any] = {}
    if root is not None:
        for key in f[root]:
            group = f[root][key]
            vars_group = group.get("vars")
            name = vars_group.attrs.get("name") if vars_group is not None else None
            groups[str(name.decode() if isinstance(name, bytes) else name) if name is not None else f"path:{key}"] = (
                group
            )
    weights: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for layer in _layer_configs(config):
        cls = layer.get("class_name", "")
        name = str(layer.get("config", {}).get("name", ""))
        if cls == "InputLayer":
            continue
        base = _snake(cls)
        n = counts.get(base, 0)
        counts[base] = n + 1
        group = groups.get(name, groups.get(f"path:{base}" + (f"_{n}" if n else "")))
        inner_cls = cls
        if cls == "TimeDistributed":
            inner_cls = layer.get("config", {}).get("layer", {}).get("class_name", "")
            group = group.get("layer") if group is not None else None
        if inner_cls not in VARIABLES or group is None:
            continue
        if inner_cls != "Dense":
            group = group.get("cell")
        vars_group = group.get("vars") if group is not None else None
        if vars_group is None:
            continue
        arrays = [np.asarray(vars_group[str(i)], dtype=np.float32) for i in range(len(vars_group))]
        weights[name] = _named(inner_cls, arrays)
    return weights


def _named(cls: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    names = VARIABLES[cls]
    if len(arrays) > len(names):
        return {f"var{i}": a for i, a in enumerate(arrays)}  # too many: the mapping refuses it, naming them
    return dict(zip(names, arrays, strict=False))


def _read_h5(path: Path) -> KerasFile:
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise _bad(path, "an HDF5 file without model_config (weights only?)")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            version = f.attrs.get("keras_version", "")
            found = KerasFile(path, "h5", config, version.decode() if isinstance(version, bytes) else str(version))
            group = f.get("model_weights", f)
            for name in group:
                layer = group[name]
                weight_names = [
                    w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs.get("weight_names", [])
                ]
                if not weight_names:
                    continue
                found.weights[name] = {
                    w.split("/")[-1].split(":")[0]: np.asarray(layer[w], dtype=np.float32) for w in weight_names
                }
    except (OSError, KeyError, ValueError) as e:
        raise _bad(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise _bad(path, "model_config holds no model config")
    if not isinstance(config["config"].get("layers", []), list):
        raise _bad(path, "model_config: 'layers' is not a list")
    return found

"""Checks of a run's listings (``manifest.json``, ``checkpoint.json``) before anything is built from them.

A listing is data read from disk, so nothing in it is trusted: every field the loaders use is
checked for type and shape first, the model it describes is built on the ``meta`` device (no
memory, whatever sizes it declares) and its tensors are compared, by name, dtype and shape, with
the safetensors files the listing vouches for. Only then is the model built for real, so a
crafted listing can neither crash a loader with a ``TypeError`` nor make it allocate more than
the verified files hold. Every problem raises :class:`~hiddenstate.errors.CheckpointError`
naming the file and the field (``manifest.json: field 'inputs': expected a list of column
names, got int 5``).

Fields a loader does not read are left alone, so a newer writer may add some.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hiddenstate.errors import CheckpointError, HiddenStateError
from hiddenstate.state import StateSpec

__all__ = [
    "check_checkpoint_listing",
    "check_optimizer_tensors",
    "check_rng",
    "check_run_listing",
    "check_run_model",
    "check_tensors",
    "meta_model",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_OPTIMIZER_TENSOR = re.compile(r"^state\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)$")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _fail(listing: Path, name: str, expected: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{listing}: field {name!r}: expected {expected}, got {_describe(value)}")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _need(listing: Path, data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise _fail(listing, name, expected, value)
    return value


def _files(listing: Path, data: Mapping[str, Any], required: Sequence[str]) -> None:
    files = data.get("files")
    if not isinstance(files, dict) or any(name not in files for name in required):
        raise CheckpointError(f"{listing}: field 'files' must list {', '.join(required)}")
    for name, entry in files.items():
        where = f"files.{name}"
        if not isinstance(entry, dict):
            raise _fail(listing, where, "an object with 'sha256' and 'bytes'", entry)
        if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            raise _fail(listing, f"{where}.sha256", "64 hex digits", entry.get("sha256"))
        if not _is_int(entry.get("bytes")):
            raise _fail(listing, f"{where}.bytes", "an int >= 0", entry.get("bytes"))


def _columns(listing: Path, data: Mapping[str, Any], name: str) -> list[str]:
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _fail(listing, name, "a list of column names", value)
    return value


def _scaler(listing: Path, data: Mapping[str, Any], name: str, width: int | None) -> None:
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(listing, name, "null or a scaler object", value)
    mean, std = value.get("mean"), value.get("std")
    for part, numbers in (("mean", mean), ("std", std)):
        if not isinstance(numbers, list) or not all(_is_finite(v) for v in numbers):
            raise _fail(listing, f"{name}.{part}", "a list of finite numbers", numbers)
    assert isinstance(mean, list) and isinstance(std, list)  # for the type checker: checked above
    if len(mean) != len(std) or (width is not None and len(mean) != width) or not all(s > 0 for s in std):
        want = f"{width} " if width is not None else ""
        raise CheckpointError(
            f"{listing}: field {name!r}: expected {want}means and {want}stds > 0, "
            f"got {len(mean)} means and {len(std)} stds"
        )
    columns = value.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or len(columns) != len(mean) or not all(isinstance(c, str) for c in columns)
    ):
        raise _fail(listing, f"{name}.columns", f"null or {len(mean)} column names", columns)


def _spec(listing: Path, data: Mapping[str, Any]) -> StateSpec:
    try:
        return StateSpec.from_json(data.get("spec"))
    except HiddenStateError as e:
        raise CheckpointError(f"{listing}: field 'spec': {e}") from None


def meta_model(config: Any, listing: Path) -> nn.Module:
    """The model ``config`` describes, built on the ``meta`` device: shapes and dtypes, no memory."""
    from hiddenstate.model import build_model

    if not isinstance(config, dict):
        raise _fail(listing, "model", "a model config object", config)
    try:
        with torch.device("meta"):
            return build_model(config)
    except (HiddenStateError, TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError) as e:
        # RuntimeError: torch refuses sizes whose storage overflows; the rest: values of the wrong type
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{listing}: field 'model': cannot rebuild the model from it: {detail}") from None


def check_tensors(path: Path, got: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """``got`` must hold exactly ``model``'s ``state_dict`` entries, each of its dtype and shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in got]
    if missing:
        raise CheckpointError(f"{path}: weights do not fit the model: missing tensor {missing[0]!r}")
    extra = sorted(k for k in got if k not in expected)
    if extra:
        raise CheckpointError(f"{path}: weights do not fit the model: unexpected tensor {extra[0]!r}")
    for name, want in expected.items():
        have = got[name]
        if have.dtype != want.dtype or have.shape != want.shape:
            raise CheckpointError(
                f"{path}: weights do not fit the model: tensor {name!r} is {_kind(have)}, the model's is {_kind(want)}"
            )


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def check_run_listing(manifest: Mapping[str, Any], listing: Path) -> None:
    """Every field of a run's ``manifest.json`` that :func:`~hiddenstate.runs.run.load_run` reads."""
    _need(listing, manifest, "version", str, "a version string")
    _need(listing, manifest, "model", dict, "a model config object")
    _spec(listing, manifest)
    _need(listing, manifest, "fingerprint", str, "a state spec fingerprint string")
    inputs = _columns(listing, manifest, "inputs")
    _columns(listing, manifest, "targets")
    _scaler(listing, manifest, "scaler", len(inputs))
    _scaler(listing, manifest, "target_scaler", None)
    for name in ("train_config", "extra"):
        if manifest.get(name) is not None and not isinstance(manifest[name], dict):
            raise _fail(listing, name, "null or an object", manifest[name])
    lanes = manifest.get("lane_state")
    if lanes is not None and not (isinstance(lanes, dict) and _is_int(lanes.get("batch"), 1)):
        raise _fail(listing, "lane_state", 'null or {"batch": N} with N >= 1', lanes)
    _files(listing, manifest, ("model.safetensors",))
    if (lanes is not None) != ("lane_state.safetensors" in manifest["files"]):
        raise CheckpointError(
            f"{listing}: field 'lane_state' is {_describe(lanes)}, but 'files' "
            f"{'does not list' if lanes is not None else 'lists'} lane_state.safetensors"
        )


def check_run_model(manifest: Mapping[str, Any], model: nn.Module, listing: Path) -> None:
    """The manifest's spec and columns against the model its config rebuilt."""
    spec, built = _spec(listing, manifest), getattr(model, "state_spec", None)
    if spec != built:
        theirs = built.describe() if isinstance(built, StateSpec) else repr(built)
        raise CheckpointError(f"{listing}: field 'spec' {spec.describe()} differs from the model config's {theirs}")
    for name, size in (("inputs", "input_size"), ("targets", "output_size")):
        want = getattr(model, size, None)
        if isinstance(want, int) and len(manifest[name]) != want:
            raise CheckpointError(
                f"{listing}: field {name!r}: {len(manifest[name])} columns for a model with {size}={want}"
            )


def check_checkpoint_listing(meta: Mapping[str, Any], listing: Path, required: Sequence[str]) -> None:
    """Every field of a checkpoint's ``checkpoint.json`` that the loader and the Trainer read."""
    _need(listing, meta, "version", str, "a version string")
    epoch = meta.get("epoch")
    if not _is_int(epoch, 1):
        raise _fail(listing, "epoch", "an int >= 1", epoch)
    named = re.match(r"^epoch-(\d+)$", listing.parent.name)
    if named and int(named.group(1)) != epoch:
        raise CheckpointError(f"{listing}: field 'epoch' is {epoch}, but the directory is {listing.parent.name}")
    _need(listing, meta, "model", dict, "a model config object")
    _spec(listing, meta)
    _need(listing, meta, "fingerprint", str, "a state spec fingerprint string")
    _need(listing, meta, "train_config", dict, "an object")
    optimizer = _need(listing, meta, "optimizer", dict, "an object with 'state' and 'param_groups'")
    state = optimizer.get("state")
    if not isinstance(state, dict) or not all(k.isdigit() and isinstance(v, dict) for k, v in state.items()):
        raise _fail(listing, "optimizer.state", "an object of per-parameter objects keyed by index", state)
    groups = optimizer.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(p) for p in g["params"])
        for g in groups
    ):
        raise _fail(listing, "optimizer.param_groups", "a list of objects with int 'params'", groups)
    rng = _need(listing, meta, "rng", dict, "an object with 'python' and 'numpy'")
    py, npy = rng.get("python"), rng.get("numpy")
    if not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list) and all(_is_int(v) for v in py[1])):
        raise _fail(listing, "rng.python", "[version, [ints], gauss]", py)
    if not (
        isinstance(npy, list)
        and len(npy) == 5
        and isinstance(npy[1], list)
        and len(npy[1]) == 624  # MT19937's key
        and all(_is_int(v) for v in npy[1])
    ):
        raise _fail(listing, "rng.numpy", "[kind, [624 ints], pos, has_gauss, cached]", npy)
    _need(listing, meta, "trainer", dict, "an object")  # its contents are the Trainer's to check
    _files(listing, meta, required)


def check_rng(rng: Mapping[str, Any], listing: Path) -> None:
    """Each generator state must be one its generator accepts (tried on fresh generators)."""
    try:
        random.Random().setstate(rng["python"])
        np.random.RandomState().set_state(rng["numpy"])
        torch.Generator().set_state(rng["torch"])
    except (TypeError, ValueError, OverflowError, RuntimeError, IndexError) as e:  # numpy: IndexError on short keys
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{listing}: field 'rng': not a valid generator state: {detail}") from None


def check_optimizer_tensors(path: Path, tensors: Mapping[str, torch.Tensor], model: nn.Module | None) -> None:
    """Names ``state.<index>.<name>``, floating tensors, and (with ``model``) each one either a
    scalar or of its parameter's shape, so a crafted file fails here, not at the first step."""
    params = [p for p in model.parameters() if p.requires_grad] if model is not None else None
    for name, t in tensors.items():
        found = _OPTIMIZER_TENSOR.match(name)
        if found is None:
            raise CheckpointError(f"{path}: tensor {name!r}: expected a name state.<index>.<name>")
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{path}: tensor {name!r}: expected a floating dtype, got {t.dtype}")
        if params is None or t.dim() == 0:
            continue
        index = int(found.group(1))
        if index >= len(params):
            raise CheckpointError(f"{path}: tensor {name!r}: the model has {len(params)} trainable parameters")
        if t.shape != params[index].shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} is {_kind(t)}, its parameter's is {_kind(params[index].detach())}"
            )

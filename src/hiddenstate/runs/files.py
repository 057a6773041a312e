"""Durable writes and verified reads: the file primitives under run directories and checkpoints.

Writing: :func:`atomic_write` replaces one file all at once (temp file, fsync, rename, fsync of
the directory); :func:`write_fsynced` and :func:`fsync_dir` are its parts, for callers that
commit a whole directory with one rename instead.

Reading: :func:`read_verified` returns a file's bytes only after checking them against the
``{"sha256", "bytes"}`` entry of the listing that names it, and :func:`parse_tensors` parses
safetensors from those bytes, so nothing is read twice and nothing is ever unpickled. Every
problem raises :class:`~hiddenstate.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from hiddenstate.errors import CheckpointError, HiddenStateError
from hiddenstate.state import State, StateSpec

__all__ = [
    "atomic_write",
    "file_entry",
    "fsync_dir",
    "json_bytes",
    "make_dirs",
    "parse_state",
    "parse_tensors",
    "pause_for_crash_test",
    "read_json",
    "read_verified",
    "remove_stale_temp_files",
    "state_bytes",
    "tensor_bytes",
    "write_fsynced",
]

#: Test-only hook: seconds to pause at each stage of a durable write (and name the stage on
#: stderr), so the crash test can SIGKILL a process in the middle of one: before a checkpoint
#: file is written, between a write and its fsync, between the fsync and the rename. Read once,
#: when this module is imported, into :data:`crash_pause`; unset, a stage costs one comparison.
PAUSE_ENV = "HIDDENSTATE_CHECKPOINT_PAUSE"
crash_pause: float | None = float(os.environ[PAUSE_ENV]) if os.environ.get(PAUSE_ENV) else None


# -- writing ------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms that cannot open a directory (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, with each folder it creates fsynced into its
    parent, so a checkpoint committed inside a new folder survives a power loss with it."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def write_fsynced(path: Path, data: bytes, *, name: str | None = None) -> None:
    """Write ``data`` to ``path`` and fsync it (not atomic by itself: see :func:`atomic_write`);
    ``name`` is the file's name in the crash test's stages (default: ``path.name``)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if crash_pause is not None:
            pause_for_crash_test(f"fsync {name or path.name}")  # written, not yet durable
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: temp file, fsync, rename, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write_fsynced(tmp, data, name=path.name)
        if crash_pause is not None:
            pause_for_crash_test(f"rename {path.name}")  # durable under its temp name, not yet in place
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_temp_files(folder: str | os.PathLike[str], name: str) -> None:
    """Delete the temp files that :func:`atomic_write` of ``folder/name`` left when killed."""
    for stale in Path(folder).glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def pause_for_crash_test(stage: str) -> None:
    """With :data:`crash_pause` set, name ``stage`` on stderr and sleep that long."""
    if crash_pause is not None:
        sys.stderr.write(f"hiddenstate-checkpoint-stage {stage}\n")
        sys.stderr.flush()
        time.sleep(crash_pause)


def file_entry(data: bytes) -> dict[str, Any]:
    """The listing entry of a file's bytes: ``{"sha256": hex, "bytes": size}``."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode()


def tensor_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Safetensors bytes of ``tensors`` (moved to the CPU, made contiguous) with ``metadata``."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return safetensors.torch.save(cpu, metadata=dict(metadata) if metadata else None)


def state_bytes(state: State) -> bytes:
    """Safetensors bytes of ``state.to_dict()``, tagged with the spec's fingerprint."""
    return tensor_bytes(state.to_dict(), {"fingerprint": state.spec.fingerprint()})


# -- reading ------------------------------------------------------------------------------------


def read_verified(folder: Path, name: str, entry: Any, listing: Path) -> bytes:
    """The bytes of ``folder/name`` after checking them against ``entry`` from ``listing``."""
    path = folder / name
    if "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"{listing}: file name {name!r} is not a plain name inside the directory")
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not isinstance(entry.get("bytes"), int)
    ):
        raise CheckpointError(f"{listing}: entry for {name!r} needs 'sha256' and 'bytes'")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (listed in {listing.name})")
    size = path.stat().st_size  # before reading: a planted huge file is refused unread
    if size > entry["bytes"]:
        raise CheckpointError(f"{path}: {size} bytes, {listing.name} records {entry['bytes']}")
    data = path.read_bytes()
    if len(data) < entry["bytes"]:
        raise CheckpointError(f"{path}: truncated: {len(data)} bytes, {listing.name} records {entry['bytes']}")
    if len(data) != entry["bytes"]:
        raise CheckpointError(f"{path}: {len(data)} bytes, {listing.name} records {entry['bytes']}")
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 mismatch (expected {entry['sha256'][:16]}, got {got[:16]}); "
            "the file was changed after it was written"
        )
    return data


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` says what a missing file means."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {what}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON (truncated or corrupted?): {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_tensors(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and ``__metadata__`` of safetensors bytes; never unpickles anything."""
    try:
        tensors = safetensors.torch.load(data)
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None
    return tensors, metadata


def parse_state(path: Path, data: bytes, spec: StateSpec) -> State:
    """The State in safetensors bytes written by :func:`state_bytes`; its fingerprint must be ``spec``'s."""
    tensors, metadata = parse_tensors(path, data)
    if metadata.get("fingerprint") != spec.fingerprint():
        raise CheckpointError(
            f"{path}: state spec fingerprint {metadata.get('fingerprint')!r} differs from the model's "
            f"{spec.fingerprint()!r}"
        )
    try:
        return State.from_dict(spec, tensors)
    except HiddenStateError as e:
        raise CheckpointError(f"{path}: {e}") from None

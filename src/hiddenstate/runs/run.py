"""Run directories and per-epoch checkpoints: safetensors + JSON, atomic writes, no pickle.

A run directory holds everything needed to rebuild and continue a model::

    RUN_DIR/
      manifest.json              model config, state spec + fingerprint, scaler, columns, train
                                 config, library version, sha256 + size of every file below
      model.safetensors          final weights (the best epoch's when validated)
      lane_state.safetensors     the carried state of every lane, State.to_dict() (optional)
      metrics.csv                one row per epoch, rewritten by the Trainer (a log, not hashed)
      checkpoints/
        epoch-0003/              one directory per epoch, committed by a single rename
          checkpoint.json        epoch, configs, spec, optimizer and RNG JSON parts, trainer
                                 history, sha256 + size of every file beside it
          model.safetensors      weights at the end of the epoch
          optimizer.safetensors  the optimizer's tensors (``state.<param>.<name>``)
          rng.safetensors        torch CPU/CUDA generator states (uint8)
          lane_state.safetensors the carried lane state (when there is one)
          best.safetensors       the best epoch's weights (when validated)
          ema.safetensors        the moving average of the weights (with TrainConfig.ema)
        epoch-0004/

Crash safety: a single file is replaced by temp file, fsync, rename, fsync of the directory
(:func:`atomic_write`). A checkpoint's files are written and fsynced in a hidden temp directory,
which one ``rename`` turns into ``epoch-NNNN``; a crash leaves either the whole checkpoint or
none of it. ``save_run`` deletes ``manifest.json`` first and writes it last, so an interrupted
save leaves a run that is refused as unsaved rather than one that loads half-written.

Loading never unpickles: tensors come from safetensors (parsed from bytes whose sha256 was just
checked) and everything else from JSON. A missing, truncated, tampered or mismatched file raises
:class:`~hiddenstate.errors.CheckpointError` naming the file. Before anything is built from a
listing, :mod:`hiddenstate.runs.listing` checks each of its fields for type and shape, builds the
model it describes on the ``meta`` device and compares that model's tensors (names, dtypes,
shapes) with the verified weights, so a crafted listing gives one error naming the file and the
field, and absurd declared sizes allocate nothing.

The durable-write and verified-read primitives live in :mod:`hiddenstate.runs.files`, and the RNG
and optimizer parts of a checkpoint in :mod:`hiddenstate.runs.snapshot`; ``atomic_write``,
``make_dirs``, ``remove_stale_temp_files``, ``capture_rng`` and ``restore_rng`` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hiddenstate.errors import CheckpointError, ConfigError, HiddenStateError
from hiddenstate.runs.files import (
    atomic_write,
    file_entry,
    fsync_dir,
    json_bytes,
    make_dirs,
    parse_state,
    parse_tensors,
    pause_for_crash_test,
    read_json,
    read_verified,
    remove_stale_temp_files,
    state_bytes,
    tensor_bytes,
    write_fsynced,
)
from hiddenstate.runs.listing import (
    check_checkpoint_listing,
    check_optimizer_tensors,
    check_rng,
    check_run_listing,
    check_run_model,
    check_tensors,
    meta_model,
)
from hiddenstate.runs.snapshot import (
    capture_rng,
    optimizer_parts,
    optimizer_state,
    restore_rng,
    rng_from_parts,
    rng_parts,
)
from hiddenstate.state import State, StateSpec

__all__ = [
    "Checkpoint",
    "Run",
    "atomic_write",
    "capture_rng",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "make_dirs",
    "remove_stale_temp_files",
    "restore_rng",
    "save_checkpoint",
    "save_run",
]

RUN_FORMAT = "hiddenstate-run/1"
CHECKPOINT_FORMAT = "hiddenstate-checkpoint/1"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


# -- the model inside a run or checkpoint ------------------------------------------------------


def _load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{path}: weights do not fit the model: {detail}") from None


def _model_spec(model: nn.Module) -> StateSpec:
    spec = getattr(model, "state_spec", None)
    if not isinstance(spec, StateSpec) or not callable(getattr(model, "config", None)):
        raise ConfigError(f"{type(model).__name__} needs .state_spec and .config() to be saved in a run directory")
    return spec


def _build(config: Any, listing: Path) -> nn.Module:
    from hiddenstate.model import build_model

    try:
        return build_model(config)
    except (HiddenStateError, TypeError, ValueError) as e:
        raise CheckpointError(f"{listing}: cannot rebuild the model from its config: {e}") from None


def _check_fingerprint(meta: Mapping[str, Any], spec: StateSpec, listing: Path) -> None:
    if meta.get("fingerprint") != spec.fingerprint():
        raise CheckpointError(
            f"{listing}: state spec fingerprint {meta.get('fingerprint')!r} differs from the model's "
            f"{spec.fingerprint()!r}"
        )


# -- run directories ----------------------------------------------------------------------------


@dataclass
class Run:
    """A loaded run directory: the model (eval mode) and everything needed to use it.

    ``scaler`` is the StandardScaler over the input columns (or None when saved without one);
    ``config`` is the train config as a dict; ``lane_state`` is the carried State of every lane.
    """

    path: Path
    model: nn.Module
    spec: StateSpec
    scaler: Any
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    config: dict[str, Any]
    manifest: dict[str, Any]
    lane_state: State | None = None
    target_scaler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def forecast(
        self,
        history: Any,
        horizon: int,
        method: str = "auto",
        quantiles: Any = None,
        *,
        num_samples: int = 100,
        seed: int | None = None,
    ) -> np.ndarray:
        """``(batch, horizon, n_targets)`` in original units from ``history`` ``(steps, n_in)``
        or ``(batch, steps, n_in)`` in original units; ``method`` is ``"auto"``, ``"rollout"`` or
        ``"direct"`` (see :func:`hiddenstate.forecast.forecast_original`). With ``quantiles``
        (a likelihood model): ``(len(quantiles), batch, horizon, n_targets)`` over ``num_samples``
        sample paths from the warmed state (:func:`hiddenstate.paths.sample_paths_original`)."""
        from hiddenstate.forecast import forecast_original

        if self.scaler is None:
            raise ConfigError(
                f"{self.path}: saved without a scaler, so no forecast in original units; use "
                "hiddenstate.forecast.forecast(run.model, history_norm, horizon) on normalised values"
            )
        if quantiles is not None:
            from hiddenstate.paths import path_quantiles, sample_paths_original

            paths = sample_paths_original(self, history, horizon, num_samples, seed)
            return path_quantiles(paths, quantiles)
        return forecast_original(self, history, horizon, method)  # type: ignore[arg-type]  # tuple columns


def save_run(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    *,
    scaler: Any,
    inputs: Sequence[str],
    targets: Sequence[str],
    train_config: Any = None,
    lane_state: State | None = None,
    target_scaler: Any = None,
    extra: Mapping[str, Any] | None = None,
    distributed: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its context into ``run_dir``; returns the manifest's path.

    ``scaler`` (over the input columns) and ``target_scaler`` (for targets that are not inputs)
    have ``to_json()`` or are None; ``train_config`` is a TrainConfig or a dict; ``lane_state`` is
    the carried State of every lane (``Trainer.lane_state``); ``extra`` is any JSON-safe dict
    (data settings the CLI needs to rebuild its batches); ``distributed`` is the lane layout of a
    distributed run (``world_size``, ``lane_ranks``, ``blocks``). Safe to call again on the same run.
    """
    run = Path(run_dir)
    spec = _model_spec(model)
    inputs, targets = tuple(str(c) for c in inputs), tuple(str(c) for c in targets)
    for name, cols, size in (("inputs", inputs, "input_size"), ("targets", targets, "output_size")):
        want = getattr(model, size, None)
        if isinstance(want, int) and len(cols) != want:
            raise ConfigError(f"save_run: {len(cols)} {name} columns for a model with {size}={want}")
    if lane_state is not None and lane_state.spec != spec:
        raise ConfigError(
            f"save_run: lane_state spec {lane_state.spec.describe()} differs from the model's {spec.describe()}"
        )
    tc = train_config.to_json() if hasattr(train_config, "to_json") else train_config
    manifest: dict[str, Any] = {
        "format": RUN_FORMAT,
        "version": _version(),
        "model": model.config(),  # type: ignore[operator]
        "spec": spec.to_json(),
        "fingerprint": spec.fingerprint(),
        "scaler": scaler.to_json() if scaler is not None else None,
        "target_scaler": target_scaler.to_json() if target_scaler is not None else None,
        "inputs": list(inputs),
        "targets": list(targets),
        "train_config": dict(tc) if tc is not None else None,
        "lane_state": None if lane_state is None else {"batch": lane_state.batch_size},
        "extra": dict(extra or {}),
        "distributed": dict(distributed) if distributed is not None else None,
        "files": {},
    }
    # Every byte is built before the directory is touched: a value that cannot be written (a
    # manifest entry JSON refuses, a tensor safetensors refuses) leaves a run saved there before intact.
    files = {"model.safetensors": tensor_bytes(model.state_dict(), {"fingerprint": spec.fingerprint()})}
    if lane_state is not None:
        files["lane_state.safetensors"] = state_bytes(lane_state)
    manifest["files"] = {name: file_entry(data) for name, data in files.items()}
    manifest_bytes = json_bytes(manifest)
    make_dirs(run)
    manifest_path = run / "manifest.json"
    # Without a manifest the run reads as unsaved; so a crash below never pairs new files with an old manifest.
    if manifest_path.exists():
        manifest_path.unlink()
        fsync_dir(run)
    if lane_state is None:
        (run / "lane_state.safetensors").unlink(missing_ok=True)
    for name, data in files.items():
        remove_stale_temp_files(run, name)
        atomic_write(run / name, data)
    atomic_write(manifest_path, manifest_bytes)
    return manifest_path


def _check_train_config(config: Any, where: Path) -> None:
    """A manifest's train_config, checked as a TrainConfig checks its fields (fields this version
    does not know are left alone: a run keeps what the version that wrote it recorded)."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: train_config: expected an object, got {type(config).__name__}")
    from hiddenstate.train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        TrainConfig.from_json({k: v for k, v in config.items() if k in known})
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: train_config: {e}") from None


def load_run(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Run:
    """Load a run directory written by :func:`save_run`; the model comes back in eval mode.

    Every file the manifest lists is checked (present, size, sha256) before it is parsed. Files
    the manifest does not list, such as a planted ``.pt``, are never opened.
    """
    run = Path(path)
    if not run.is_dir():
        what = "is a file, not a run directory" if run.is_file() else "run directory not found"
        raise CheckpointError(f"{run}: {what}")
    listing = run / "manifest.json"
    manifest = read_json(listing, "not a saved run (save_run writes manifest.json last)")
    if manifest.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{listing}: unknown format {manifest.get('format')!r}; expected {RUN_FORMAT!r}")
    check_run_listing(manifest, listing)
    blobs = {name: read_verified(run, name, entry, listing) for name, entry in manifest["files"].items()}
    shape = meta_model(manifest["model"], listing)  # no memory: sizes are checked against the files first
    check_run_model(manifest, shape, listing)
    _check_fingerprint(manifest, _model_spec(shape), listing)
    weights, _ = parse_tensors(run / "model.safetensors", blobs["model.safetensors"])
    check_tensors(run / "model.safetensors", weights, shape)
    model = _build(manifest["model"], listing)
    spec = _model_spec(model)
    _load_weights(model, weights, run / "model.safetensors")
    lane_state = None
    if "lane_state.safetensors" in blobs:
        lane_state = parse_state(run / "lane_state.safetensors", blobs["lane_state.safetensors"], spec)
        _check_lane_state(lane_state, manifest["lane_state"]["batch"], model, run / "lane_state.safetensors")
    scaler, target_scaler = _scaler(manifest, "scaler", listing), _scaler(manifest, "target_scaler", listing)
    _check_train_config(manifest.get("train_config"), run / "manifest.json")
    model.to(device).eval()
    return Run(
        path=run,
        model=model,
        spec=spec,
        scaler=scaler,
        inputs=tuple(manifest["inputs"]),
        targets=tuple(manifest["targets"]),
        config=dict(manifest.get("train_config") or {}),
        manifest=manifest,
        lane_state=None if lane_state is None else lane_state.to(device),
        target_scaler=target_scaler,
        extra=dict(manifest.get("extra") or {}),
    )


def _check_lane_state(state: State, batch: int, model: nn.Module, path: Path) -> None:
    dtype = next((p.dtype for p in model.parameters()), state.dtype)
    if state.batch_size != batch or state.dtype != dtype:
        raise CheckpointError(
            f"{path}: a state of {state.batch_size} lanes in {state.dtype}; expected {batch} lanes "
            f"(the listing's field 'lane_state') in {dtype} (the weights' dtype)"
        )


def _scaler(manifest: Mapping[str, Any], key: str, listing: Path) -> Any:
    if manifest.get(key) is None:
        return None
    from hiddenstate.data.scaling import StandardScaler

    try:
        return StandardScaler.from_json(manifest[key])
    except HiddenStateError as e:
        raise CheckpointError(f"{listing}: cannot read {key!r}: {e}") from None


# -- per-epoch checkpoints ----------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One loaded, verified checkpoint; the Trainer applies it to resume."""

    path: Path
    epoch: int
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any]
    lane_state: State | None
    best_weights: dict[str, torch.Tensor] | None
    trainer: dict[str, Any]
    ema_weights: dict[str, torch.Tensor] | None = None  # TrainConfig.ema's average, to continue it
    rank_rng: list[dict[str, Any]] | None = None  # every rank's generators, for a distributed run
    distributed: dict[str, Any] | None = None  # world_size, lane_ranks, blocks


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Committed checkpoint directories of a run, oldest first (temp and trash dirs are skipped)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_config: Mapping[str, Any],
    trainer: Mapping[str, Any],
    lane_state: State | None = None,
    best_weights: Mapping[str, torch.Tensor] | None = None,
    ema_weights: Mapping[str, torch.Tensor] | None = None,
    keep: int | None = None,
    rank_rng: Sequence[bytes] | None = None,
    distributed: Mapping[str, Any] | None = None,
) -> Path:
    """Commit the training state after ``epoch`` to ``run_dir/checkpoints/epoch-NNNN``.

    ``trainer`` is the Trainer's JSON-safe bookkeeping (history, early stopping). The global RNG
    states are captured here. With ``keep``, only the newest ``keep`` checkpoints stay. A
    distributed run adds every rank's generators (``rank_rng``: safetensors bytes per rank, written
    as ``rng-rank-N.safetensors``) and its lane layout (``distributed``).
    """
    spec = _model_spec(model)
    folder = Path(run_dir) / "checkpoints"
    make_dirs(folder)
    for stale in folder.iterdir():  # left by a process killed mid-write or mid-prune
        if stale.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(stale, ignore_errors=True)
    opt_tensors, opt_meta = optimizer_parts(optimizer.state_dict())
    rng_tensors, rng_meta = rng_parts(capture_rng())
    files = {
        "model.safetensors": tensor_bytes(model.state_dict(), {"fingerprint": spec.fingerprint()}),
        "optimizer.safetensors": tensor_bytes(opt_tensors),
        "rng.safetensors": tensor_bytes(rng_tensors),
    }
    if lane_state is not None:
        files["lane_state.safetensors"] = state_bytes(lane_state)
    if best_weights is not None:
        files["best.safetensors"] = tensor_bytes(best_weights, {"fingerprint": spec.fingerprint()})
    if ema_weights is not None:
        files["ema.safetensors"] = tensor_bytes(ema_weights, {"fingerprint": spec.fingerprint()})
    for r, blob in enumerate(rank_rng or ()):
        files[f"rng-rank-{r}.safetensors"] = blob
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": _version(),
        "epoch": epoch,
        "model": model.config(),  # type: ignore[operator]
        "spec": spec.to_json(),
        "fingerprint": spec.fingerprint(),
        "train_config": dict(train_config),
        "optimizer": opt_meta,
        "rng": rng_meta,
        "trainer": dict(trainer),
        "distributed": dict(distributed) if distributed is not None else None,
        "files": {name: file_entry(data) for name, data in files.items()},
    }
    try:
        meta_bytes = json_bytes(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: checkpoint state is not JSON-safe: {e}") from None
    tmp = folder / f".tmp-epoch-{epoch:04d}-{secrets.token_hex(4)}"
    tmp.mkdir()
    for name, data in [*files.items(), ("checkpoint.json", meta_bytes)]:
        pause_for_crash_test(f"write {name}")
        write_fsynced(tmp / name, data)
    pause_for_crash_test("fsync dir")
    fsync_dir(tmp)
    final = folder / f"epoch-{epoch:04d}"
    if final.exists():  # written by an earlier attempt that crashed before it was resumed from
        _retire(final)
    pause_for_crash_test("rename")
    os.rename(tmp, final)  # the commit: the checkpoint exists completely or not at all
    fsync_dir(folder)
    pause_for_crash_test("prune")
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            _retire(old)
    return final


def _retire(path: Path) -> None:
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, trash)  # atomic: the checkpoint disappears whole before it is deleted
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike[str], *, model: nn.Module | None = None) -> Checkpoint:
    """Load and verify a checkpoint: ``path`` is an ``epoch-NNNN`` directory or a run directory
    (its newest checkpoint). With ``model``, the spec fingerprint and weights must fit it."""
    folder = Path(path)
    if not (folder / "checkpoint.json").exists() and (folder / "checkpoints").is_dir():
        found = list_checkpoints(folder)
        if not found:
            raise CheckpointError(f"{folder / 'checkpoints'}: no checkpoint to load")
        folder = found[-1]
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint directory not found")
    listing = folder / "checkpoint.json"
    meta = read_json(listing, "not a checkpoint directory")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{listing}: unknown format {meta.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    required = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
    check_checkpoint_listing(meta, listing, required)
    blobs = {name: read_verified(folder, name, entry, listing) for name, entry in meta["files"].items()}
    shape = model if model is not None else meta_model(meta["model"], listing)
    spec = _model_spec(model) if model is not None else _spec_from(meta, listing)
    _check_fingerprint(meta, spec, listing)
    weights, _ = parse_tensors(folder / "model.safetensors", blobs["model.safetensors"])
    check_tensors(folder / "model.safetensors", weights, shape)
    opt_tensors, _ = parse_tensors(folder / "optimizer.safetensors", blobs["optimizer.safetensors"])
    check_optimizer_tensors(folder / "optimizer.safetensors", opt_tensors, model)
    rng_tensors, _ = parse_tensors(folder / "rng.safetensors", blobs["rng.safetensors"])
    try:
        rng = rng_from_parts(rng_tensors, meta["rng"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{listing}: malformed RNG state: {e}") from None
    check_rng(rng, listing)
    epoch = meta["epoch"]
    lane_state = None
    if "lane_state.safetensors" in blobs:
        lane_state = parse_state(folder / "lane_state.safetensors", blobs["lane_state.safetensors"], spec)
        _check_lane_state(lane_state, lane_state.batch_size, shape, folder / "lane_state.safetensors")
    best = None
    if "best.safetensors" in blobs:
        best, _ = parse_tensors(folder / "best.safetensors", blobs["best.safetensors"])
        check_tensors(folder / "best.safetensors", best, shape)
    ema = None
    if "ema.safetensors" in blobs:
        ema, _ = parse_tensors(folder / "ema.safetensors", blobs["ema.safetensors"])
        check_tensors(folder / "ema.safetensors", ema, shape)
    return Checkpoint(
        path=folder,
        epoch=epoch,
        meta=meta,
        model_state=weights,
        optimizer_state=optimizer_state(opt_tensors, meta.get("optimizer") or {}, folder / "optimizer.safetensors"),
        rng=rng,
        lane_state=lane_state,
        best_weights=best,
        ema_weights=ema,
        trainer=dict(meta.get("trainer") or {}),
        rank_rng=_rank_rng(folder, blobs) or None,
        distributed=meta.get("distributed"),
    )


def _rank_rng(folder: Path, blobs: Mapping[str, bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while (name := f"rng-rank-{len(out)}.safetensors") in blobs:
        tensors, metadata = parse_tensors(folder / name, blobs[name])
        try:
            out.append(rng_from_parts(tensors, json.loads(metadata["rng"])))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / name}: malformed RNG state: {e}") from None
    return out


def _spec_from(meta: Mapping[str, Any], listing: Path) -> StateSpec:
    try:
        return StateSpec.from_json(meta.get("spec"))
    except HiddenStateError as e:
        raise CheckpointError(f"{listing}: {e}") from None


def _version() -> str:
    from hiddenstate import __version__

    return __version__

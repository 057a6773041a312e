"""Run directories and checkpoints: round trips, exact errors for damaged files, and no pickle, ever."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.runs.run import (
    atomic_write,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _model(seed: int = 0, **kw: Any) -> hs.SequenceModel:
    torch.manual_seed(seed)
    return hs.SequenceModel(3, 2, [hs.LSTM(8), hs.GRU(4)], **kw)


def _state(model: hs.SequenceModel, batch: int = 3) -> hs.State:
    torch.manual_seed(7)
    return hs.State.from_dict(
        model.state_spec, {n: torch.randn(batch, 8 if ".0." in n else 4) for n in model.state_spec.names}
    )


def _scaler() -> hs.StandardScaler:
    return hs.StandardScaler.fit(np.array([[1.0, 10.0, 0.0], [3.0, 14.0, 2.0]]), columns=["a", "b", "c"])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    model = _model()
    hs.save_run(
        tmp_path / "run",
        model,
        scaler=_scaler(),
        inputs=["a", "b", "c"],
        targets=["a", "b"],
        train_config=hs.TrainConfig(epochs=3, lr=0.01),
        lane_state=_state(model),
        extra={"steps": 96},
    )
    return tmp_path / "run"


def _rewrite_manifest(run: Path, name: str) -> None:
    """Make the manifest agree with the current bytes of ``name`` (a consistent tamper)."""
    manifest = json.loads((run / "manifest.json").read_text())
    data = (run / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (run / "manifest.json").write_text(json.dumps(manifest))


# -- round trips --------------------------------------------------------------------------------


def test_save_and_load_run_round_trip(run_dir: Path) -> None:
    model = _model()
    run = hs.load_run(run_dir)
    assert not run.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(run.model.state_dict()[k], v), k
    assert run.spec == model.state_spec
    assert run.scaler == _scaler()
    assert (run.inputs, run.targets) == (("a", "b", "c"), ("a", "b"))
    assert run.config == hs.TrainConfig(epochs=3, lr=0.01).to_json()
    assert run.extra == {"steps": 96}
    assert all(torch.equal(a, b) for a, b in zip(run.lane_state.tensors(), _state(model).tensors(), strict=True))
    manifest = run.manifest
    assert manifest["version"] == hs.__version__
    assert manifest["fingerprint"] == model.state_spec.fingerprint()
    assert manifest["model"] == model.config()
    for name, entry in manifest["files"].items():
        data = (run_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert sorted(manifest["files"]) == ["lane_state.safetensors", "model.safetensors"]


def test_run_forecast_is_in_original_units(run_dir: Path) -> None:
    run = hs.load_run(run_dir)
    history = np.array([[1.0, 10.0, 0.0], [2.0, 12.0, 1.0], [3.0, 14.0, 2.0]])
    out = run.forecast(history, 4, method="rollout")
    assert out.shape == (1, 4, 2)
    with torch.no_grad():
        y, _ = run.model(torch.tensor(run.scaler.transform(history[None]), dtype=torch.float32))
    first = y[0, -1].double().numpy() * run.scaler.std[:2] + run.scaler.mean[:2]
    np.testing.assert_allclose(out[0, 0], first, rtol=1e-5)


def test_save_run_again_replaces_files_and_drops_old_lane_state(run_dir: Path) -> None:
    model = _model(seed=1)
    hs.save_run(run_dir, model, scaler=None, inputs=["a", "b", "c"], targets=["a", "b"])
    run = hs.load_run(run_dir)
    assert torch.equal(run.model.head.weight, model.head.weight)
    assert run.lane_state is None and run.scaler is None and run.config == {}
    assert not (run_dir / "lane_state.safetensors").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json", "model.safetensors"]


def test_forecast_without_a_scaler_says_what_to_do(tmp_path: Path) -> None:
    hs.save_run(tmp_path, _model(), scaler=None, inputs="abc", targets="ab")
    with pytest.raises(
        hs.ConfigError,
        match=rf"^{re.escape(str(tmp_path))}: saved without a scaler, so no forecast in original units; use "
        r"hiddenstate.forecast.forecast\(run.model, history_norm, horizon\) on normalised values$",
    ):
        hs.load_run(tmp_path).forecast(np.zeros((3, 3)), 2)


def test_save_run_errors(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(hs.ConfigError, match=r"^save_run: 2 inputs columns for a model with input_size=3$"):
        hs.save_run(tmp_path, model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
    other = hs.State.zeros(hs.StateSpec([("lstm", 8)]), 2)
    with pytest.raises(
        hs.ConfigError, match=r"^save_run: lane_state spec \[lstm 8\] differs from the model's \[lstm 8, gru 4\]$"
    ):
        hs.save_run(tmp_path, model, scaler=None, inputs="abc", targets="ab", lane_state=other)


def test_learned_gru_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 1, [hs.GRU(5)], state_encoder="learned", horizon=3)
    hs.save_run(tmp_path, model, scaler=None, inputs=["x", "y"], targets=["y"])
    run = hs.load_run(tmp_path)
    assert run.model.config() == model.config()
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in model.state_dict().items())


# -- damaged run directories: exact messages ------------------------------------------------------


def test_tampered_file_is_refused(run_dir: Path) -> None:
    path = run_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(path))}: sha256 mismatch \(expected [0-9a-f]{{16}}, got [0-9a-f]{{16}}\); "
        r"the file was changed after it was written$",
    ):
        hs.load_run(run_dir)


def test_truncated_file_is_refused(run_dir: Path) -> None:
    path = run_dir / "lane_state.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        hs.CheckpointError, match=rf"^{re.escape(str(path))}: truncated: 100 bytes, manifest.json records {size}$"
    ):
        hs.load_run(run_dir)


def test_missing_file_is_refused(run_dir: Path) -> None:
    (run_dir / "lane_state.safetensors").unlink()
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(run_dir / 'lane_state.safetensors'))}: missing \(listed in manifest.json\)$",
    ):
        hs.load_run(run_dir)


def test_missing_or_truncated_manifest_is_refused(run_dir: Path, tmp_path: Path) -> None:
    manifest = run_dir / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:50])
    with pytest.raises(
        hs.CheckpointError, match=rf"^{re.escape(str(manifest))}: not valid JSON \(truncated or corrupted\?\): "
    ):
        hs.load_run(run_dir)
    manifest.unlink()
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(manifest))}: missing; not a saved run \(save_run writes manifest.json last\)$",
    ):
        hs.load_run(run_dir)
    with pytest.raises(hs.CheckpointError, match=rf"^{re.escape(str(tmp_path / 'nowhere'))}: run directory not found$"):
        hs.load_run(tmp_path / "nowhere")


def test_mismatched_spec_fingerprint_is_refused(run_dir: Path) -> None:
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    fingerprint = manifest["fingerprint"]
    manifest["fingerprint"] = "hs1-lstm8-gru5-0000000000"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(manifest_path))}: state spec fingerprint 'hs1-lstm8-gru5-0000000000' differs "
        rf"from the model's '{fingerprint}'$",
    ):
        hs.load_run(run_dir)


def test_lane_state_of_another_spec_is_refused(run_dir: Path) -> None:
    from safetensors.torch import save

    other = hs.State.zeros(hs.StateSpec([("gru", 8), ("gru", 4)]), 3)
    path = run_dir / "lane_state.safetensors"
    path.write_bytes(save(other.to_dict(), metadata={"fingerprint": other.spec.fingerprint()}))
    _rewrite_manifest(run_dir, "lane_state.safetensors")
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(path))}: state spec fingerprint '{other.spec.fingerprint()}' differs from the "
        rf"model's '{_model().state_spec.fingerprint()}'$",
    ):
        hs.load_run(run_dir)


def test_weights_that_do_not_fit_are_refused(run_dir: Path) -> None:
    from safetensors.torch import save

    path = run_dir / "model.safetensors"
    weights = dict(_model().state_dict())
    weights["head.weight"] = torch.zeros(2, 5)
    path.write_bytes(save({k: v.contiguous() for k, v in weights.items()}))
    _rewrite_manifest(run_dir, "model.safetensors")
    with pytest.raises(
        hs.CheckpointError, match=rf"^{re.escape(str(path))}: weights do not fit the model: .*head.weight"
    ):
        hs.load_run(run_dir)


def test_manifest_names_outside_the_run_are_refused(run_dir: Path) -> None:
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../secret"] = manifest["files"]["model.safetensors"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(manifest_path))}: file name '../secret' is not a plain name inside the directory$",
    ):
        hs.load_run(run_dir)


# -- no pickle on any load path -----------------------------------------------------------------


class _Bait:
    """Unpickling this creates the marker directory: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_planted_pickle_is_never_unpickled(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bait = pickle.dumps(_Bait(marker))
    pickle.loads(bait)  # the bait works: loading it makes the marker
    assert marker.is_dir()
    marker.rmdir()

    (run_dir / "model.pt").write_bytes(bait)
    (run_dir / "lane_state.pt").write_bytes(bait)
    run = hs.load_run(run_dir)  # planted beside the real files: never opened
    assert run.model is not None and not marker.exists()

    # Passed off as the weights, with a manifest that vouches for it: parsed as safetensors only.
    (run_dir / "model.safetensors").write_bytes(bait)
    _rewrite_manifest(run_dir, "model.safetensors")
    path = re.escape(str(run_dir / "model.safetensors"))
    with pytest.raises(hs.CheckpointError, match=rf"^{path}: not a valid safetensors file: "):
        hs.load_run(run_dir)
    assert not marker.exists()


def test_a_pickle_in_a_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bait = pickle.dumps(_Bait(marker))
    ckpt = _checkpoint(tmp_path / "run")
    (ckpt / "optimizer.pt").write_bytes(bait)
    (ckpt / "optimizer.safetensors").write_bytes(bait)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["files"]["optimizer.safetensors"] = {"sha256": hashlib.sha256(bait).hexdigest(), "bytes": len(bait)}
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(hs.CheckpointError, match=r"optimizer.safetensors: not a valid safetensors file: "):
        load_checkpoint(ckpt)
    with pytest.raises(hs.CheckpointError, match=r"optimizer.safetensors: not a valid safetensors file: "):
        hs.Trainer(_model(), hs.TrainConfig(progress=False)).fit([], run_dir=tmp_path / "run", resume=True)
    assert not marker.exists()


# -- checkpoints --------------------------------------------------------------------------------


def _checkpoint(run: Path, epoch: int = 1, **kw: Any) -> Path:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 5, 3))[0].square().mean().backward()
    optimizer.step()
    return save_checkpoint(
        run,
        epoch=epoch,
        model=model,
        optimizer=optimizer,
        train_config={"epochs": 3},
        trainer={"history": {"rows": []}},
        lane_state=_state(model),
        **kw,
    )


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    model(torch.randn(2, 5, 3))[0].square().mean().backward()
    optimizer.step()
    best = {k: v + 1 for k, v in model.state_dict().items()}
    lanes = _state(model)  # reseeds torch
    rng = capture_rng()
    expected = [random.random(), float(np.random.random_sample()), float(torch.rand(()))]
    restore_rng(rng)  # the checkpoint captures the state these draws started from
    path = save_checkpoint(
        tmp_path,
        epoch=7,
        model=model,
        optimizer=optimizer,
        train_config={"epochs": 9},
        trainer={"history": {"rows": [{"epoch": 1}]}},
        lane_state=lanes,
        best_weights=best,
    )
    assert path == tmp_path / "checkpoints" / "epoch-0007"
    assert sorted(p.name for p in path.iterdir()) == [
        "best.safetensors",
        "checkpoint.json",
        "lane_state.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
    ]
    ckpt = load_checkpoint(tmp_path, model=_model(seed=3))  # a run dir means its newest checkpoint
    assert ckpt.epoch == 7 and ckpt.path == path and ckpt.trainer == {"history": {"rows": [{"epoch": 1}]}}
    assert all(torch.equal(v, ckpt.model_state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, ckpt.best_weights[k]) for k, v in best.items())
    original = optimizer.state_dict()
    assert ckpt.optimizer_state["param_groups"] == original["param_groups"]
    for pid, entries in original["state"].items():
        assert entries.keys() == ckpt.optimizer_state["state"][pid].keys()
        assert all(torch.equal(v, ckpt.optimizer_state["state"][pid][k]) for k, v in entries.items())
    fresh = torch.optim.AdamW(_model().parameters(), lr=0.5)
    fresh.load_state_dict(ckpt.optimizer_state)
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9) and fresh.param_groups[0]["lr"] == 0.01
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    restore_rng(ckpt.rng)
    assert [random.random(), float(np.random.random_sample()), float(torch.rand(()))] == expected


def test_checkpoint_keeps_the_newest_and_clears_debris(tmp_path: Path) -> None:
    for epoch in range(1, 5):
        _checkpoint(tmp_path, epoch=epoch, keep=2)
    (tmp_path / "checkpoints" / ".tmp-epoch-0005-dead").mkdir()  # left by a killed writer
    (tmp_path / "checkpoints" / ".trash-epoch-0001-dead").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0003", "epoch-0004"]
    _checkpoint(tmp_path, epoch=5, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0004", "epoch-0005"]
    _checkpoint(tmp_path, epoch=5, keep=None)  # rewriting an epoch replaces it whole
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0004", "epoch-0005"]


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "lane_state.safetensors"]
)
def test_damaged_checkpoint_files_are_refused(tmp_path: Path, name: str) -> None:
    ckpt = _checkpoint(tmp_path)
    path = ckpt / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(path))}: truncated: {len(data) // 2} bytes, checkpoint.json records {len(data)}$",
    ):
        load_checkpoint(ckpt)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(hs.CheckpointError, match=rf"^{re.escape(str(path))}: sha256 mismatch"):
        load_checkpoint(ckpt)
    path.unlink()
    with pytest.raises(hs.CheckpointError, match=rf"^{re.escape(str(path))}: missing \(listed in checkpoint.json\)$"):
        load_checkpoint(ckpt)


def test_checkpoint_listing_errors(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    listing = ckpt / "checkpoint.json"
    listing.write_bytes(listing.read_bytes()[:-40])
    with pytest.raises(hs.CheckpointError, match=rf"^{re.escape(str(listing))}: not valid JSON"):
        load_checkpoint(ckpt)
    listing.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(listing))}: unknown format 'something-else'; expected 'hiddenstate-checkpoint/1'$",
    ):
        load_checkpoint(ckpt)
    with pytest.raises(
        hs.CheckpointError, match=rf"^{re.escape(str(tmp_path / 'none'))}: checkpoint directory not found$"
    ):
        load_checkpoint(tmp_path / "none")


def test_resume_with_another_model_is_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    other = hs.SequenceModel(3, 2, [hs.LSTM(8), hs.GRU(5)])
    with pytest.raises(
        hs.CheckpointError,
        match=rf"^{re.escape(str(ckpt / 'checkpoint.json'))}: state spec fingerprint "
        rf"'{_model().state_spec.fingerprint()}' differs from the model's '{other.state_spec.fingerprint()}'$",
    ):
        hs.Trainer(other, hs.TrainConfig(progress=False)).fit([], run_dir=tmp_path, resume=True)
    wider_head = hs.SequenceModel(3, 3, [hs.LSTM(8), hs.GRU(4)])
    with pytest.raises(
        hs.CheckpointError,
        match=r"model.safetensors: weights do not fit the model: tensor 'head.weight' is float32 \(2, 4\), "
        r"the model's is float32 \(3, 4\)$",
    ):
        load_checkpoint(ckpt, model=wider_head)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, b"old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp files left behind

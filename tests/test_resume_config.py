"""Resuming checks the training: every TrainConfig field that changes results, the model and the
batch layout must match the checkpoint's; epochs and patience may grow; where the run only runs
(device, threads, progress, kept checkpoints) may change."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.runs.run import list_checkpoints
from hiddenstate.train.resume import changes

BASE = {"epochs": 2, "lr": 1e-2, "progress": False, "threads": 1, "patience": 3}


def _batches(batch_size: int = 2, steps: int = 8) -> hs.StatefulBatches:
    t = np.arange(60.0)
    x = np.stack([np.sin(t / 4), np.cos(t / 6)], axis=1)
    return hs.StatefulBatches([x], [x], batch_size=batch_size, steps=steps)


def _model(dropout: float = 0.0) -> hs.SequenceModel:
    torch.manual_seed(0)
    return hs.SequenceModel(2, 2, [hs.LSTM(4), hs.LSTM(4)], dropout=dropout)


def _first_epoch(run: Path, **kw: Any) -> None:
    cfg = hs.TrainConfig(**{**BASE, "epochs": 1, **kw})
    stop = [lambda trainer, row: setattr(trainer, "should_stop", True)]  # after one epoch, whatever cfg.epochs
    hs.Trainer(_model(), cfg).fit(_batches(), _batches(), run_dir=run, callbacks=stop)


def _resume(run: Path, model: Any = None, batches: Any = None, **kw: Any) -> hs.History:
    cfg = hs.TrainConfig(**{**BASE, **kw})
    trainer = hs.Trainer(model if model is not None else _model(), cfg)
    return trainer.fit(batches if batches is not None else _batches(), _batches(), run_dir=run, resume=True)


def _message(run: Path, field: str, given: Any, saved: Any, why: str = "") -> str:
    listing = run / "checkpoints" / "epoch-0001" / "checkpoint.json"
    return (
        f"{listing}: cannot resume with {field} {given!r}: the checkpoint was trained with {saved!r}{why}; "
        "a resumed run continues the same training (only epochs and patience may grow)"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 3e-3),
        ("schedule", "step"),
        ("step_size", 3),
        ("gamma", 0.9),
        ("loss", "huber"),
        ("huber_delta", 2.0),
        ("optimizer", "adamw"),
        ("weight_decay", 0.1),
        ("clip", None),
        ("clip", 0.5),
        ("state_policy", "zeros"),
        ("detach_every", 2),
        ("seed", 1),
        ("restore_best", False),
        ("patience", 2),
        ("ema", 0.99),
    ],
)
def test_a_changed_field_is_refused_naming_it_and_both_values(tmp_path: Path, field: str, value: Any) -> None:
    _first_epoch(tmp_path)
    saved = hs.TrainConfig(**{**BASE, "epochs": 1}).to_json()[field]
    why = "; patience may only grow" if field == "patience" else ""
    with pytest.raises(hs.ConfigError, match="^" + re.escape(_message(tmp_path, field, value, saved, why)) + "$"):
        _resume(tmp_path, **{field: value})
    assert len(list_checkpoints(tmp_path)) == 1  # nothing was trained or written


def test_a_changed_backend_is_refused(tmp_path: Path) -> None:
    from hiddenstate._kernels.fused import fused_available

    if not fused_available():
        pytest.skip("no C compiler for the fused kernel")
    _first_epoch(tmp_path)
    with pytest.raises(hs.ConfigError, match=re.escape(_message(tmp_path, "backend", "fused", "torch"))):
        _resume(tmp_path, backend="fused")


def test_a_changed_precision_is_refused(tmp_path: Path) -> None:
    # bf16 trains on CUDA only; the checkpoint says it was trained so, the resuming run is fp32
    _first_epoch(tmp_path)
    listing = tmp_path / "checkpoints" / "epoch-0001" / "checkpoint.json"
    meta = json.loads(listing.read_text())
    meta["train_config"]["precision"] = "bf16"
    listing.write_text(json.dumps(meta))
    with pytest.raises(hs.ConfigError, match=re.escape(_message(tmp_path, "precision", "fp32", "bf16"))):
        _resume(tmp_path)


def test_another_model_config_is_refused(tmp_path: Path) -> None:
    _first_epoch(tmp_path)
    config = _model().config()
    # same layers, same weights: only the dropout differs, which the weights cannot show
    with pytest.raises(
        hs.ConfigError,
        match=re.escape(_message(tmp_path, "model", {**config, "dropout": 0.5}, config)),
    ):
        _resume(tmp_path, model=_model(dropout=0.5))


@pytest.mark.parametrize(("batch_size", "steps"), [(1, 8), (2, 6)])
def test_another_batch_layout_is_refused(tmp_path: Path, batch_size: int, steps: int) -> None:
    _first_epoch(tmp_path)
    with pytest.raises(hs.ConfigError, match=r"cannot resume with batch layout \{'kind': 'StatefulBatches', "):
        _resume(tmp_path, batches=_batches(batch_size, steps))


def test_epochs_and_patience_may_grow_and_where_it_runs_may_change(tmp_path: Path) -> None:
    whole = hs.Trainer(_model(), hs.TrainConfig(**{**BASE, "epochs": 3})).fit(_batches(), _batches())
    _first_epoch(tmp_path)
    resumed = _resume(tmp_path, epochs=3, patience=None, threads=2, keep_checkpoints=1, device="cpu")
    assert resumed.train_loss == whole.train_loss  # what may change did not change the results
    _resume(tmp_path, epochs=4, patience=None)  # and grow again (None, no early stopping, stays the most)


def test_with_the_cosine_schedule_epochs_must_match(tmp_path: Path) -> None:
    _first_epoch(tmp_path, schedule="cosine", epochs=2)
    why = "; with the cosine schedule every epoch's learning rate depends on epochs"
    with pytest.raises(hs.ConfigError, match=re.escape(_message(tmp_path, "epochs", 3, 2, why))):
        _resume(tmp_path, schedule="cosine", epochs=3)
    assert len(_resume(tmp_path, schedule="cosine", epochs=2).rows) == 2


def test_fewer_epochs_than_the_checkpoint_was_trained_for_are_refused_as_a_shrink(tmp_path: Path) -> None:
    _first_epoch(tmp_path, epochs=3)  # stopped after one of its three epochs
    with pytest.raises(
        hs.ConfigError, match="^" + re.escape(_message(tmp_path, "epochs", 2, 3, "; epochs may only grow")) + "$"
    ):
        _resume(tmp_path, epochs=2)
    assert len(list_checkpoints(tmp_path)) == 1


def test_a_crafted_train_config_in_the_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    _first_epoch(tmp_path)
    listing = tmp_path / "checkpoints" / "epoch-0001" / "checkpoint.json"
    meta = json.loads(listing.read_text())
    meta["train_config"]["lr"] = "fast"
    listing.write_text(json.dumps(meta))
    with pytest.raises(
        hs.CheckpointError,
        match="^"
        + re.escape(f"{listing}: field 'train_config': TrainConfig.lr: expected a number > 0, got 'fast'")
        + "$",
    ):
        _resume(tmp_path)


def test_changes_is_the_comparison_the_cli_uses() -> None:
    saved = {"lr": 0.01, "epochs": 5, "patience": 3, "threads": 1}
    assert changes(saved, {**saved, "epochs": 9, "patience": None, "threads": 4}) == []
    found = changes(saved, {**saved, "lr": 0.1, "epochs": 4, "patience": 2})
    assert [(c.field, c.saved, c.given) for c in found] == [("lr", 0.01, 0.1), ("epochs", 5, 4), ("patience", 3, 2)]
    assert changes(saved, {**saved, "epochs": 9}, may_grow=()) != []

"""TrainConfig.ema: a moving average of the weights, validated, kept as the best epoch's weights
and as the final ones, saved with each checkpoint and continued exactly on resume; the weights
that train are the same as without it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.runs.run import list_checkpoints


def _series(n: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    return np.stack([np.sin(2 * np.pi * t / 24 + phase), np.cos(2 * np.pi * t / 40 + phase)], axis=1)


def _train() -> hs.StatefulBatches:
    xs = [_series(98), _series(60, phase=1.0)]
    return hs.StatefulBatches(xs, xs, batch_size=2, steps=8)


def _val() -> hs.StatefulBatches:
    x = _series(50, phase=2.0)
    return hs.StatefulBatches([x], [x], batch_size=1, steps=8)


def _model(seed: int = 0) -> hs.SequenceModel:
    torch.manual_seed(seed)
    return hs.SequenceModel(2, 2, [hs.LSTM(8), hs.GRU(8)], dropout=0.2)


def _config(**kw: Any) -> hs.TrainConfig:
    return hs.TrainConfig(**{"epochs": 3, "lr": 2e-2, "progress": False, "threads": 1, **kw})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder:
    """The trained weights after every optimizer step, and the average they make by hand."""

    def __init__(self, trainer: hs.Trainer, decay: float) -> None:
        self.decay, self.steps, self.average = decay, [], None
        self.model = trainer.model
        trainer.optimizer.register_step_post_hook(lambda *_: self.record())
        self.at_epoch: list[dict[str, torch.Tensor]] = []

    def record(self) -> None:
        w = _weights(self.model)
        self.steps.append(w)
        if self.average is None:  # the first update copies
            self.average = {k: v.clone() for k, v in w.items()}
        else:
            self.average = {k: self.decay * a + (1 - self.decay) * w[k] for k, a in self.average.items()}

    def epoch_end(self, trainer: hs.Trainer, row: dict[str, Any]) -> None:
        self.at_epoch.append({k: v.clone() for k, v in self.average.items()})


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def _evaluate(weights: dict[str, torch.Tensor], batches: Any) -> float:
    model = _model(seed=7)
    model.load_state_dict(weights)
    return hs.Trainer(model, _config()).evaluate(batches)["loss"]


def test_the_final_weights_are_the_moving_average_of_the_trained_ones() -> None:
    trainer = hs.Trainer(_model(), _config(ema=0.9))
    rec = Recorder(trainer, 0.9)
    trainer.fit(_train())
    assert len(rec.steps) == 3 * len(_train())
    _close(_weights(trainer.model), rec.average)
    last = rec.steps[-1]
    assert any(not torch.allclose(last[k], rec.average[k]) for k in last)  # not the last trained weights


def test_the_weights_that_train_are_the_same_with_and_without_the_average() -> None:
    plain = hs.Trainer(_model(), _config())
    averaged = hs.Trainer(_model(), _config(ema=0.9))
    a, b = Recorder(plain, 0.9), Recorder(averaged, 0.9)
    history_a = plain.fit(_train(), _val())
    history_b = averaged.fit(_train(), _val())  # validated on the average, then trained on from the trained weights
    assert history_a.train_loss == history_b.train_loss
    assert len(a.steps) == len(b.steps)
    for wa, wb in zip(a.steps, b.steps, strict=True):
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
    assert history_a.val_loss != history_b.val_loss  # validation saw other weights


def test_validation_and_the_best_epoch_use_the_average() -> None:
    x = _series(98)
    val = hs.StatefulBatches([x], [-x], batch_size=1, steps=8)  # the better it fits train, the worse val gets
    trainer = hs.Trainer(_model(), _config(epochs=12, patience=2, ema=0.8))
    rec = Recorder(trainer, 0.8)
    history = trainer.fit(_train(), val, callbacks=[rec.epoch_end])
    assert history.stopped_early and history.best_epoch < len(history.rows)
    for row, average in zip(history.rows, rec.at_epoch, strict=True):
        assert row["val_loss"] == pytest.approx(_evaluate(average, val), rel=1e-5)
    _close(_weights(trainer.model), rec.at_epoch[history.best_epoch - 1])


def test_a_resumed_run_continues_the_average_exactly(tmp_path: Path) -> None:
    cfg = _config(epochs=4, ema=0.95)
    whole = hs.Trainer(_model(), cfg)
    whole.fit(_train(), _val(), run_dir=tmp_path / "whole")

    def stop(trainer: hs.Trainer, row: dict[str, Any]) -> None:
        trainer.should_stop = row["epoch"] == 2

    hs.Trainer(_model(), cfg).fit(_train(), _val(), run_dir=tmp_path / "resumed", callbacks=[stop])
    assert (list_checkpoints(tmp_path / "resumed")[-1] / "ema.safetensors").is_file()
    resumed = hs.Trainer(_model(seed=3), cfg)
    history = resumed.fit(_train(), _val(), run_dir=tmp_path / "resumed", resume=True)
    assert history.val_loss == whole.history.val_loss
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def _drop_ema(checkpoint: Path) -> None:
    (checkpoint / "ema.safetensors").unlink()
    listing = checkpoint / "checkpoint.json"
    meta = json.loads(listing.read_text())
    del meta["files"]["ema.safetensors"]
    listing.write_text(json.dumps(meta))


def test_a_checkpoint_without_its_average_is_refused_by_name(tmp_path: Path) -> None:
    cfg = _config(epochs=3, ema=0.95)
    stop = [lambda trainer, row: setattr(trainer, "should_stop", True)]
    hs.Trainer(_model(), cfg).fit(_train(), run_dir=tmp_path, callbacks=stop)
    checkpoint = list_checkpoints(tmp_path)[-1]
    before = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    _drop_ema(checkpoint)
    with pytest.raises(
        hs.CheckpointError,
        match="^" + re.escape(f"{checkpoint}: trained with ema=0.95 but holds no ema.safetensors; ") + "the moving",
    ):
        hs.Trainer(_model(), cfg).fit(_train(), run_dir=tmp_path, resume=True)
    assert list_checkpoints(tmp_path) == [checkpoint]  # nothing was trained or written
    assert hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest() == before


def test_a_checkpoint_with_a_crafted_count_is_refused_by_name(tmp_path: Path) -> None:
    cfg = _config(epochs=3, ema=0.95)
    stop = [lambda trainer, row: setattr(trainer, "should_stop", True)]
    hs.Trainer(_model(), cfg).fit(_train(), run_dir=tmp_path, callbacks=stop)
    checkpoint = list_checkpoints(tmp_path)[-1]
    listing = checkpoint / "checkpoint.json"
    meta = json.loads(listing.read_text())
    assert meta["trainer"]["ema_updates"] == len(_train())
    meta["trainer"]["ema_updates"] = -1
    listing.write_text(json.dumps(meta))
    with pytest.raises(hs.CheckpointError, match=r"holds ema_updates -1, not an int >= 0; the moving average"):
        hs.Trainer(_model(), cfg).fit(_train(), run_dir=tmp_path, resume=True)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.9"])
def test_an_ema_outside_0_1_is_refused(bad: Any) -> None:
    with pytest.raises(
        hs.ConfigError,
        match="^" + re.escape(f"TrainConfig.ema: expected None or a decay in (0, 1), such as 0.995; got {bad!r}") + "$",
    ):
        hs.TrainConfig(ema=bad)

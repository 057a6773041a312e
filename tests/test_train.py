"""Trainer and TrainConfig: truncated BPTT, state policies, masks, determinism, resume, early stopping."""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import hiddenstate as hs
from hiddenstate.data.lanes import Batch
from hiddenstate.train.trainer import History


def _series(n: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    return np.stack([np.sin(2 * np.pi * t / 24 + phase), np.cos(2 * np.pi * t / 40 + phase)], axis=1)


def _batches(lengths: tuple[int, ...] = (98,), batch_size: int = 2, steps: int = 8, split: bool = True):
    xs = [_series(n, phase=j) for j, n in enumerate(lengths)]
    return hs.StatefulBatches(xs, xs, batch_size=batch_size, steps=steps, split=split)


def _model(seed: int = 0, layers: Any = None, **kw: Any) -> hs.SequenceModel:
    torch.manual_seed(seed)
    return hs.SequenceModel(2, 2, layers or [hs.LSTM(8)], **kw)


def _config(**kw: Any) -> hs.TrainConfig:
    return hs.TrainConfig(**{"epochs": 2, "lr": 1e-2, "progress": False, **kw})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal_weights(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> None:
    wa = a if isinstance(a, dict) else a.state_dict()
    wb = b if isinstance(b, dict) else b.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


class Recording(hs.SequenceModel):
    """A SequenceModel that remembers what the Trainer passed in and what came out."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[dict[str, Any]] = []

    def forward(self, x, state=None, *, cond=None, reset=None):  # type: ignore[override]
        y, out = super().forward(x, state, cond=cond, reset=reset)
        self.calls.append({"x": x, "state": state, "cond": cond, "reset": reset, "out": out, "y": y})
        return y, out


def _recording(**kw: Any) -> Recording:
    torch.manual_seed(0)
    return Recording(2, 2, [hs.LSTM(8), hs.GRU(4)], **kw)


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"loss": "l2"}, "TrainConfig.loss: expected one of mse, mae, huber, got 'l2'"),
        (
            {"state_policy": "keep"},
            "TrainConfig.state_policy: expected one of carry, encode, carry+encode, zeros, batch, got 'keep'",
        ),
        ({"optimizer": "sgd"}, "TrainConfig.optimizer: expected one of adam, adamw, got 'sgd'"),
        ({"schedule": "linear"}, "TrainConfig.schedule: expected one of none, cosine, step, exponential, got 'linear'"),
        ({"epochs": 0}, "TrainConfig.epochs: expected an int >= 1, got 0"),
        ({"detach_every": 1.5}, "TrainConfig.detach_every: expected an int >= 1, got 1.5"),
        ({"patience": 0}, "TrainConfig.patience: expected an int >= 1, got 0"),
        ({"lr": -1.0}, "TrainConfig.lr: expected a number > 0, got -1.0"),
        ({"clip": 0}, "TrainConfig.clip: expected a number > 0, got 0"),
        ({"max_minutes": 0}, "TrainConfig.max_minutes: expected a number > 0, got 0"),
        ({"gamma": 2.0}, "TrainConfig.gamma: expected a number in (0, 1], got 2.0"),
        ({"weight_decay": -0.1}, "TrainConfig.weight_decay: expected a number >= 0, got -0.1"),
        ({"device": "tpu"}, "TrainConfig.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"progress": 1}, "TrainConfig.progress: expected True or False, got 1"),
        ({"backend": "cuda"}, "TrainConfig.backend: expected one of torch, fused, got 'cuda'"),
        ({"precision": "fp8"}, "TrainConfig.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    ],
)
def test_config_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(hs.ConfigError, match=f"^{re.escape(message)}$"):
        hs.TrainConfig(**kw)


def test_config_json_round_trip_and_unknown_field() -> None:
    cfg = hs.TrainConfig(epochs=3, clip=None, patience=2, state_policy="zeros")
    assert hs.TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(hs.ConfigError, match=r"^TrainConfig.from_json: unknown field 'epoch'$"):
        hs.TrainConfig.from_json({"epoch": 3})


@pytest.mark.parametrize("policy", ["encode", "carry+encode"])
def test_encode_policies_need_a_state_encoder(policy: str) -> None:
    with pytest.raises(
        hs.ConfigError,
        match=rf"^state_policy '{re.escape(policy)}' sets states from batch.cond through the model's StateEncoder; "
        r"build the model with state_encoder='cond:N' \(N = number of input columns\)$",
    ):
        hs.Trainer(_model(), _config(state_policy=policy))


# -- training -----------------------------------------------------------------------------------


def test_training_reduces_loss() -> None:
    train, val = _batches((194,), batch_size=4, steps=12), _batches((98,), steps=12)
    trainer = hs.Trainer(_model(layers=[hs.LSTM(16)]), _config(epochs=6, lr=3e-2))
    before = trainer.evaluate(val)
    history = trainer.fit(train, val)
    after = trainer.evaluate(val)
    assert len(history.rows) == 6 and [r["epoch"] for r in history.rows] == [1, 2, 3, 4, 5, 6]
    assert history.train_loss[-1] < history.train_loss[0] / 10
    assert after["loss"] < before["loss"] / 10
    assert after["loss"] == pytest.approx(history.val_loss[history.best_epoch - 1])
    assert history.rows[-1]["sample_steps_per_s"] > 0 and history.rows[-1]["lr"] == 3e-2


def test_carry_passes_each_chunk_the_previous_final_state_detached() -> None:
    # Three series of unequal length in two lanes, so lanes reset in the middle of an epoch.
    data = _batches((50, 34, 26), batch_size=2, steps=8, split=False)
    model = _recording()
    hs.Trainer(model, _config(epochs=1, state_policy="carry")).fit(data)
    calls, batches = model.calls, list(data)
    assert len(calls) == len(batches) > 4
    assert calls[0]["state"] is None  # every epoch starts from the model's initial state
    for k in range(1, len(calls)):
        given, previous = calls[k]["state"], calls[k - 1]["out"]
        assert all(torch.equal(a, b) for a, b in zip(given.tensors(), previous.tensors(), strict=True))
        assert not any(t.requires_grad for t in given.tensors())
        assert previous.layers[0].h.requires_grad  # it was in the graph of chunk k-1
        reset = batches[k].reset
        if reset.any():
            assert torch.equal(calls[k]["reset"], reset)
        else:
            assert calls[k]["reset"] is None
    assert any(b.reset.any() for b in batches[1:])


def test_carry_reset_rows_start_from_the_initial_state() -> None:
    data = _batches((50, 34, 26), batch_size=2, steps=8, split=False)
    model = _recording()
    trainer = hs.Trainer(model, _config(state_policy="carry"))
    trainer.evaluate(data)  # weights stay fixed, so every output can be recomputed
    checked = 0
    for call, batch in zip(model.calls, data, strict=True):
        for row in torch.nonzero(batch.reset).flatten().tolist():
            fresh, _ = hs.SequenceModel.forward(model, batch.x[row : row + 1])
            torch.testing.assert_close(call["y"][row : row + 1], fresh)
            checked += 1
    assert checked == 3  # one per series


def test_zeros_policy_never_carries() -> None:
    data = _batches((50, 34, 26), batch_size=2, steps=8, split=False)
    model = _recording()
    hs.Trainer(model, _config(epochs=1, state_policy="zeros")).fit(data)
    for call in model.calls:
        assert all(int(torch.count_nonzero(t)) == 0 for t in call["state"].tensors())
        assert int(torch.count_nonzero(call["out"].layers[0].h)) > 0


@dataclass(frozen=True)
class _GivenBatch:
    """A batch that brings its own starting state (``state_policy="batch"``)."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    reset: torch.Tensor
    state: hs.State | None


def test_batch_policy_passes_each_batch_its_own_state_and_y_may_have_other_steps() -> None:
    model = _recording()
    spec = model.state_spec
    torch.manual_seed(1)
    batches = [
        _GivenBatch(
            torch.randn(3, 8, 2),
            torch.randn(3, 5, 2),  # 5 target steps for 8 input steps: the model's last 5 outputs
            torch.ones(3, 5, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
            None
            if k == 1
            else hs.State.from_tensors(spec, [(torch.full((3, 8), 0.1 * k), torch.randn(3, 8)), torch.randn(3, 4)]),
        )
        for k in range(3)
    ]

    class LastSteps(torch.nn.Module):
        def __init__(self, inner: Recording) -> None:
            super().__init__()
            self.inner, self.state_spec = inner, inner.state_spec

        def forward(self, x, state):
            y, out = self.inner(x, state)
            return y[:, -5:], out

    trainer = hs.Trainer(LastSteps(model), _config(epochs=1, state_policy="batch"))
    trainer.fit(batches)
    assert len(model.calls) == 3
    for batch, call in zip(batches, model.calls, strict=True):
        if batch.state is None:
            assert call["state"] is None
        else:
            for got, want in zip(call["state"].tensors(), batch.state.tensors(), strict=True):
                assert torch.equal(got, want)
    scores = trainer.evaluate(batches)
    with torch.no_grad():
        want = torch.stack([(model(b.x, b.state)[0][:, -5:] - b.y).square().mean() for b in batches]).mean()
    assert scores["mse"] == pytest.approx(float(want), rel=1e-6)


def test_encode_policy_sets_state_from_cond_and_trains_the_encoder() -> None:
    data = _batches((98,), batch_size=2, steps=8)
    model = _recording(state_encoder="cond:2")
    encoder_before = _weights(model.encoder)
    trainer = hs.Trainer(model, _config(epochs=1, state_policy="encode"))
    trainer.fit(data)
    for call, batch in zip(model.calls, data, strict=True):
        assert call["state"] is None and call["reset"] is None
        assert torch.equal(call["cond"], batch.cond)
    grad = model.encoder.h_heads[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    after = _weights(model.encoder)
    assert all(not torch.equal(encoder_before[k], after[k]) for k in after)


def test_carry_encode_encodes_at_resets_and_carries_otherwise() -> None:
    data = _batches((50, 34, 26), batch_size=2, steps=8, split=False)
    model = _recording(state_encoder="cond:2")
    hs.Trainer(model, _config(epochs=1, state_policy="carry+encode")).fit(data)
    calls, batches = model.calls, list(data)
    assert calls[0]["state"] is None and torch.equal(calls[0]["cond"], batches[0].cond)
    for k in range(1, len(calls)):
        assert all(
            torch.equal(a, b) for a, b in zip(calls[k]["state"].tensors(), calls[k - 1]["out"].tensors(), strict=True)
        )
        assert torch.equal(calls[k]["cond"], batches[k].cond)
        assert (calls[k]["reset"] is not None) == bool(batches[k].reset.any())


def test_detach_every_k_equals_one_chunk_k_times_longer() -> None:
    # One series split over two lanes; chunks of 6 stepped every 2 chunks see the same data and
    # gradients as chunks of 12 stepped every chunk.
    x = _series(2 + 2 * 24)
    short = hs.StatefulBatches([x], [x], batch_size=2, steps=6)
    long = hs.StatefulBatches([x], [x], batch_size=2, steps=12)
    assert (len(short), len(long)) == (4, 2)
    a = hs.Trainer(_model(), _config(detach_every=2))
    b = hs.Trainer(_model(), _config(detach_every=1))
    ha, hb = a.fit(short), b.fit(long)
    steps = [s["step"] for s in a.optimizer.state_dict()["state"].values()]
    assert all(float(s) == 4.0 for s in steps)  # 2 epochs x 2 optimizer steps
    assert ha.train_loss == pytest.approx(hb.train_loss, rel=1e-5)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=1e-5, atol=1e-6)
    # and with detach_every=1 the short chunks give a different (truly truncated) result
    c = hs.Trainer(_model(), _config(detach_every=1))
    c.fit(short)
    assert not torch.allclose(c.model.head.weight, a.model.head.weight, atol=1e-6)


def test_detach_every_k_weights_each_chunk_by_its_valid_steps() -> None:
    # One lane, 20 input rows: chunks of 6 hold 6, 6, 6 and 2 valid steps, chunks of 12 hold 12
    # and 8. Stepped every 2 chunks, the short ones must give the mean over the window's valid
    # elements (as the long chunks do), not the mean of the two chunk means.
    x = _series(2 + 20)
    short = hs.StatefulBatches([x], [x], batch_size=1, steps=6)
    long = hs.StatefulBatches([x], [x], batch_size=1, steps=12)
    assert [b.valid_count for b in short] == [6, 6, 6, 2] and [b.valid_count for b in long] == [12, 8]
    a = hs.Trainer(_model(), _config(detach_every=2))
    b = hs.Trainer(_model(), _config(detach_every=1))
    assert a.fit(short).train_loss == pytest.approx(b.fit(long).train_loss, rel=1e-5)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=1e-5, atol=1e-6)


def _with_padding_targets(batches: hs.StatefulBatches, value: float) -> list[Batch]:
    out = []
    for b in batches:
        y = b.y.clone()
        y[~b.mask] = value
        out.append(Batch(b.x, y, b.reset, b.mask, b.cond, b.lanes))
    return out


def test_mask_excludes_padding_from_loss_and_gradients() -> None:
    data = _batches((30, 21), batch_size=2, steps=8, split=False)
    assert not all(bool(b.mask.all()) for b in data)
    changed = _with_padding_targets(data, float("nan"))
    a = hs.Trainer(_model(), _config(epochs=1))
    b = hs.Trainer(_model(), _config(epochs=1))
    assert a.evaluate(data) == b.evaluate(changed)
    assert a.fit(data).train_loss == b.fit(changed).train_loss
    _assert_equal_weights(a.model, b.model)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_evaluate_is_the_mean_over_valid_elements(loss: str) -> None:
    data = _batches((30, 21), batch_size=2, steps=8, split=False)
    trainer = hs.Trainer(_model(), _config(loss=loss, huber_delta=0.3, state_policy="zeros"))
    got = trainer.evaluate(data)
    errors, huber = [], []
    with torch.no_grad():
        for b in data:
            y_hat, _ = trainer.model(b.x)  # zeros: every chunk from a zero state
            errors.append((y_hat - b.y)[b.mask])
            huber.append(F.huber_loss(y_hat, b.y, reduction="none", delta=0.3)[b.mask])
    e = torch.cat(errors).double()
    expected = {"mse": float(e.square().mean()), "mae": float(e.abs().mean())}
    expected["loss"] = {"mse": expected["mse"], "mae": expected["mae"], "huber": float(torch.cat(huber).mean())}[loss]
    assert got == pytest.approx(expected, rel=1e-6)


# -- determinism, resume, early stopping --------------------------------------------------------


def _dropout_model() -> hs.SequenceModel:
    return _model(layers=[hs.LSTM(8), hs.GRU(8)], dropout=0.3)


def test_same_seed_gives_bitwise_equal_weights() -> None:
    data = _batches((98,), batch_size=2, steps=8)
    runs = []
    for seed in (3, 3, 4):
        trainer = hs.Trainer(_dropout_model(), _config(seed=seed))
        trainer.fit(data)
        runs.append(trainer.model)
    _assert_equal_weights(runs[0], runs[1])
    assert not torch.equal(runs[0].head.weight, runs[2].head.weight)  # the seed drives dropout


def test_optimizer_is_fused_on_the_cpu_and_matches_the_plain_one() -> None:
    """The Trainer's Adam runs as one fused kernel; it makes the same updates as the default
    (for-each) implementation to float32 rounding."""
    data = _batches((98,), batch_size=2, steps=8)
    fused = hs.Trainer(_dropout_model(), _config(epochs=2))
    assert fused.optimizer.defaults["fused"] is True
    fused.fit(data)
    plain = hs.Trainer(_dropout_model(), _config(epochs=2))
    plain.optimizer = torch.optim.Adam(plain._params, lr=plain.config.lr)
    plain.fit(data)
    for k, v in fused.model.state_dict().items():
        torch.testing.assert_close(v, plain.model.state_dict()[k], rtol=0, atol=1e-5)


def test_fused_backend_option_trains_like_the_default_backend() -> None:
    from hiddenstate._kernels import fused as fast

    if not fast.fused_available():
        pytest.skip("no C compiler to build the fused kernel")
    data = _batches((98,), batch_size=2, steps=8)
    runs = {}
    for backend in ("torch", "fused"):
        model = _model(layers=[hs.LSTM(8), hs.LSTM(6)], dropout=0.3)
        trainer = hs.Trainer(model, _config(backend=backend))
        trainer.fit(data)
        assert trainer.model.rnn.backend == backend
        runs[backend] = trainer
    for k, v in runs["fused"].model.state_dict().items():
        torch.testing.assert_close(v, runs["torch"].model.state_dict()[k], rtol=0, atol=1e-5)
    assert runs["fused"].history.train_loss == pytest.approx(runs["torch"].history.train_loss, abs=1e-6)


def test_backend_and_precision_options_refuse_what_they_cannot_run() -> None:
    gru = _model(layers=[hs.GRU(4)])
    with pytest.raises(hs.ConfigError, match=r"^layer 0 \(gru, hidden 4\): the fused backend runs lstm layers only"):
        hs.Trainer(gru, _config(backend="fused"))
    with pytest.raises(
        hs.ConfigError,
        match=r"^TrainConfig.precision 'bf16' is mixed precision for CUDA; the device is cpu: use 'fp32'$",
    ):
        hs.Trainer(_model(), _config(precision="bf16", device="cpu"))
    with pytest.raises(hs.ConfigError, match=r"^TrainConfig.backend 'fused': the model has no StackedRNN `rnn`$"):
        hs.Trainer(torch.nn.Linear(2, 2), _config(backend="fused"))


class _InterruptError(Exception):
    pass


def _stop_after(epoch: int):
    def callback(trainer: hs.Trainer, row: dict[str, Any]) -> None:
        if row["epoch"] == epoch:
            raise _InterruptError

    return callback


@pytest.mark.parametrize("sampler", ["lanes", "windows"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, sampler: str) -> None:
    if sampler == "lanes":
        train = _batches((98, 60), batch_size=2, steps=8)
    else:
        x = _series(60)
        train = hs.WindowSampler([x], [x], window=8, batch_size=16, shuffle=True, seed=1)
    val = _batches((50,), steps=8)
    cfg = _config(epochs=4, optimizer="adamw", weight_decay=0.01, schedule="cosine", clip=0.5)

    whole = hs.Trainer(_dropout_model(), cfg)
    whole.fit(train, val, run_dir=tmp_path / "whole")

    if sampler == "windows":
        train.set_epoch(0)
    first = hs.Trainer(_dropout_model(), cfg)
    with pytest.raises(_InterruptError):
        first.fit(train, val, run_dir=tmp_path / "resumed", callbacks=[_stop_after(2)])
    torch.manual_seed(1234)  # a fresh process would start from other RNG states
    resumed = hs.Trainer(_model(seed=99, layers=[hs.LSTM(8), hs.GRU(8)], dropout=0.3), cfg)
    history = resumed.fit(train, val, run_dir=tmp_path / "resumed", resume=True)

    _assert_equal_weights(whole.model, resumed.model)
    assert [r["train_loss"] for r in history.rows] == whole.history.train_loss
    assert [r["val_loss"] for r in history.rows] == whole.history.val_loss
    assert history.best_epoch == whole.history.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(whole.lane_state.tensors(), resumed.lane_state.tensors(), strict=True))
    with open(tmp_path / "resumed" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["train_loss"]) for r in rows] == whole.history.train_loss


def test_each_epoch_reads_a_shuffling_sampler_in_that_epochs_order() -> None:
    x = _series(60)
    train = hs.WindowSampler([x], [x], window=8, batch_size=16, shuffle=True, seed=1)
    model = _recording()
    hs.Trainer(model, _config(epochs=3)).fit(train)
    per_epoch = len(train)
    firsts = [model.calls[e * per_epoch]["x"] for e in range(3)]
    for epoch, x0 in enumerate(firsts):
        train.set_epoch(epoch)
        assert torch.equal(x0, next(iter(train)).x)
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_early_stopping_keeps_the_best_weights() -> None:
    train = _batches((98,), batch_size=2, steps=8)
    x = _series(98)
    val = hs.StatefulBatches([x], [-x], batch_size=2, steps=8)  # the better it fits train, the worse val gets
    cfg = _config(epochs=20, patience=2, lr=3e-2)
    trainer = hs.Trainer(_model(), cfg)
    history = trainer.fit(train, val)
    best = history.best_epoch
    assert history.stopped_early and len(history.rows) == best + 2 < 20
    assert history.best_val_loss == min(history.val_loss)
    assert history.val_loss[best - 1] == history.best_val_loss
    again = hs.Trainer(_model(), _config(epochs=best, lr=3e-2))
    again.fit(train)
    _assert_equal_weights(trainer.model, again.model)


def test_stopped_run_resumes_as_stopped(tmp_path) -> None:
    train, x = _batches((98,), batch_size=2, steps=8), _series(98)
    val = hs.StatefulBatches([x], [-x], batch_size=2, steps=8)
    cfg = _config(epochs=20, patience=1, lr=3e-2)
    first = hs.Trainer(_model(), cfg)
    done = first.fit(train, val, run_dir=tmp_path)
    again = hs.Trainer(_model(seed=5), cfg)
    history = again.fit(train, val, run_dir=tmp_path, resume=True)
    assert history.stopped_early and len(history.rows) == len(done.rows)
    _assert_equal_weights(first.model, again.model)


# -- run directory side effects, threads, errors ------------------------------------------------


def test_metrics_csv_has_one_row_per_epoch(tmp_path) -> None:
    data = _batches((98,), batch_size=2, steps=8)
    trainer = hs.Trainer(_model(), _config(epochs=3, schedule="step", step_size=2, gamma=0.5))
    history = trainer.fit(data, data, run_dir=tmp_path)
    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[0] == "epoch,train_loss,val_loss,lr,seconds,sample_steps_per_s"
    rows = list(csv.DictReader(text.splitlines()))
    assert [float(r["lr"]) for r in rows] == [1e-2, 1e-2, 5e-3]
    assert [float(r["val_loss"]) for r in rows] == history.val_loss
    assert all(float(r["sample_steps_per_s"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002", "epoch-0003"]


def test_exponential_schedule_holds_step_size_epochs_then_decays_every_epoch() -> None:
    data = _batches((50,), batch_size=2, steps=8)
    cfg = _config(epochs=6, schedule="exponential", step_size=3, gamma=0.5)
    history = hs.Trainer(_model(), cfg).fit(data)
    assert [r["lr"] for r in history.rows] == [1e-2, 1e-2, 1e-2, 5e-3, 2.5e-3, 1.25e-3]


def test_max_minutes_ends_the_epoch_in_progress_and_stops() -> None:
    data = _batches((98,), batch_size=2, steps=8)  # 6 chunks per epoch
    model = _recording()
    trainer = hs.Trainer(model, _config(epochs=3, max_minutes=1e-9))
    history = trainer.fit(data, data)
    training_calls = len(model.calls) - len(data)  # the rest validated the partial epoch
    assert training_calls == 1 and len(data) == 6
    assert len(history.rows) == 1 and history.rows[0]["val_loss"] is not None and trainer.should_stop


def test_fit_refuses_a_run_dir_with_checkpoints_and_resume_without_any(tmp_path) -> None:
    data = _batches((50,), batch_size=2, steps=8)
    hs.Trainer(_model(), _config(epochs=1)).fit(data, run_dir=tmp_path / "run")
    with pytest.raises(
        hs.CheckpointError,
        match=r"/run/checkpoints: holds checkpoints of an earlier run; "
        r"pass resume=True to continue it, or use a new run_dir$",
    ):
        hs.Trainer(_model(), _config(epochs=1)).fit(data, run_dir=tmp_path / "run")
    with pytest.raises(hs.CheckpointError, match=r"/empty/checkpoints: no checkpoint to resume from$"):
        hs.Trainer(_model(), _config(epochs=1)).fit(data, run_dir=tmp_path / "empty", resume=True)
    with pytest.raises(hs.ConfigError, match=r"^fit\(resume=True\) needs the run_dir to resume from$"):
        hs.Trainer(_model(), _config(epochs=1)).fit(data, resume=True)


def test_threads_follow_model_size_and_are_restored() -> None:
    data = _batches((26,), batch_size=1, steps=8)
    seen: list[int] = []

    def record(trainer: hs.Trainer, row: dict[str, Any]) -> None:
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    hs.Trainer(_model(layers=[hs.LSTM(32)]), _config(epochs=1)).fit(data, callbacks=[record])
    hs.Trainer(_model(layers=[hs.LSTM(33)]), _config(epochs=1)).fit(data, callbacks=[record])
    hs.Trainer(_model(), _config(epochs=1, threads=2)).fit(data, callbacks=[record])
    from hiddenstate.train.trainer import _cores

    assert seen == [1, _cores(), 2]
    assert torch.get_num_threads() == before


def test_callbacks_can_stop_training_and_history_serialises() -> None:
    data = _batches((50,), batch_size=2, steps=8)
    trainer = hs.Trainer(_model(), _config(epochs=5))

    def stop(t: hs.Trainer, row: dict[str, Any]) -> None:
        t.should_stop = row["epoch"] == 2

    history = trainer.fit(data, callbacks=[stop])
    assert len(history.rows) == 2 and not history.stopped_early and trainer.epoch == 2
    assert History.from_json(history.to_json()) == history
    assert trainer.lane_state.batch_size == 2 and not trainer.lane_state.layers[0].h.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_cpu_checkpoint(tmp_path) -> None:
    data = _batches((98,), batch_size=2, steps=8)
    trainer = hs.Trainer(_model(), _config(epochs=2, device="auto"))
    assert trainer.device.type == "cuda"
    history = trainer.fit(data, data, run_dir=tmp_path)
    assert history.train_loss[-1] < history.train_loss[0]
    assert trainer.lane_state.device.type == "cuda"
    resumed = hs.Trainer(_model(seed=3), _config(epochs=3, device="cuda"))
    resumed.fit(data, data, run_dir=tmp_path, resume=True)
    assert len(resumed.history.rows) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_training(tmp_path, precision: str) -> None:
    data = _batches((98,), batch_size=2, steps=8)
    trainer = hs.Trainer(_model(), _config(epochs=3, device="cuda", precision=precision))
    history = trainer.fit(data, data, run_dir=tmp_path)
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.lane_state.layers[0].h.dtype == torch.float32  # saved in the weights' dtype
    from hiddenstate.runs import run as checkpoint

    saved = checkpoint.load_checkpoint(checkpoint.list_checkpoints(tmp_path)[-1])
    assert saved.lane_state is not None and saved.lane_state.layers[0].h.dtype == torch.float32


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_loss_and_throughput_on_a_terminal(monkeypatch) -> None:
    data = _batches((98,), batch_size=2, steps=8)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    hs.Trainer(_model(), _config(epochs=2, progress=True)).fit(data, data)
    text = terminal.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert re.search(r"loss \d\.\d+  val \d\.\d+", text) and "sample-steps/s" in text
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    hs.Trainer(_model(), _config(epochs=1, progress=False)).fit(data)
    assert quiet.getvalue() == ""


def test_the_batch_policy_on_batches_that_bring_no_state_starts_from_the_default() -> None:
    x = [np.random.default_rng(0).normal(size=(40, 2))]
    batches = hs.StatefulBatches(x, x, batch_size=1, steps=8)
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    history = hs.Trainer(model, hs.TrainConfig(epochs=1, state_policy="batch", progress=False)).fit(batches)
    assert len(history.rows) == 1 and np.isfinite(history.rows[0]["train_loss"])


def test_lane_state_is_each_lanes_state_at_its_last_valid_step() -> None:
    """A lane whose last piece ends in padding, or that goes idle before the others, reports the
    state after its series' last row, not after the zeros that pad the chunk."""
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (50, 23, 9, 4)]
    batches = hs.StatefulBatches(xs, xs, batch_size=2, steps=8, split=False)
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(6), hs.GRU(5)])
    trainer = hs.Trainer(model, hs.TrainConfig(epochs=1, lr=1e-30, progress=False))  # the weights stay as they are
    trainer.fit(batches)
    assert any(len(lane) > 1 for lane in batches.assignment)  # a lane reads two series
    for i, lane in enumerate(batches.assignment):
        j = lane[-1][0]  # the lane's last series, read whole from row 1 to its second-to-last row
        with torch.no_grad():
            _, want = model(torch.from_numpy(xs[j][1:-1])[None], model.initial_state(1))
        got = trainer.lane_state.select([i])
        for a, b in zip(got.to_dict().values(), want.to_dict().values(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

"""The served model: streams of different step counts in one batch, fresh streams, forecasts, layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate._kernels.fused import fused_available
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.forecast import forecast, target_indices, warm
from hiddenstate.serve.served import FUSED_MAX_HIDDEN, ServedModel

INPUTS = ("a", "b", "c")


def _served(layers: list[hs.LayerSpec] | None = None, targets: tuple[str, ...] = INPUTS, **kw: object) -> ServedModel:
    torch.manual_seed(0)
    model = hs.SequenceModel(3, len(targets), layers or [hs.LSTM(8), hs.GRU(6)], **kw).eval()  # type: ignore[arg-type]
    if model.learned is not None:
        with torch.no_grad():
            model.learned.h0[0].fill_(0.3)  # a learned initial state that is not zeros
    scaler = StandardScaler.fit(np.random.default_rng(0).normal(50, 10, (200, 3)), columns=list(INPUTS))
    return ServedModel.build(model, scaler, INPUTS, targets)


def _rows(rng: np.random.Generator, steps: int) -> np.ndarray:
    return rng.normal(size=(steps, 3)).astype(np.float32)  # normalised rows


def _states(served: ServedModel, n: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-0.9, 0.9, (n, served.state_width)).astype(np.float32))


def test_mixing_step_counts_in_a_batch_changes_nothing_bit_for_bit() -> None:
    served = _served()
    rng = np.random.default_rng(0)
    steps = [1, 3, 5, 3, 1, 5, 3, 2]
    xs = [_rows(rng, t) for t in steps]
    starts = _states(served, len(xs))
    new, preds = served.advance(starts, np.zeros(len(xs), bool), xs)
    for t in set(steps):
        group = [i for i, s in enumerate(steps) if s == t]
        alone_new, alone_preds = served.advance(starts[group], np.zeros(len(group), bool), [xs[i] for i in group])
        assert torch.equal(new[group], alone_new) and torch.equal(preds[group], alone_preds)
        # ... and that group is exactly the library's model call, with no padding anywhere.
        with torch.inference_mode():
            y, state = served.model(torch.from_numpy(np.stack([xs[i] for i in group])), served.to_state(starts[group]))
        assert torch.equal(served.to_flat(state), alone_new) and torch.equal(y[:, -1], alone_preds)


def test_each_stream_of_a_mixed_batch_matches_the_library_run_alone() -> None:
    served = _served()
    rng = np.random.default_rng(1)
    steps = [4, 1, 7, 2, 2, 9]
    xs = [_rows(rng, t) for t in steps]
    starts = _states(served, len(xs))
    new, preds = served.advance(starts, np.zeros(len(xs), bool), xs)
    for i, x in enumerate(xs):
        with torch.inference_mode():
            y, state = served.model(torch.from_numpy(x)[None], served.to_state(starts[i : i + 1]))
        # One row alone takes other BLAS kernels than a batch, so the last bit may differ; nothing more.
        torch.testing.assert_close(served.to_flat(state)[0], new[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y[0, -1], preds[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", [None, "learned"])
def test_a_fresh_stream_starts_from_the_models_initial_state(encoder: str | None) -> None:
    served = _served(state_encoder=encoder)
    x = _rows(np.random.default_rng(2), 4)
    garbage = torch.full((1, served.state_width), 7.0)  # ignored for a fresh stream
    new, preds = served.advance(garbage, np.array([True]), [x])
    with torch.inference_mode():
        y, state = served.model(torch.from_numpy(x)[None])  # state None: the initial state
    assert torch.equal(served.to_flat(state), new) and torch.equal(y[:, -1], preds)


def test_a_state_encoder_model_takes_the_first_row_as_cond_like_warm() -> None:
    served = _served(state_encoder="cond:3")
    assert served.cond_size == 1
    x = _rows(np.random.default_rng(3), 5)
    new, preds = served.advance(torch.zeros(1, served.state_width), np.array([True]), [x])
    expected = warm(served.model, torch.from_numpy(x)[None])
    assert torch.equal(served.to_flat(expected), new)
    with torch.inference_mode():
        y, _ = served.model(torch.from_numpy(x[1:])[None], cond=torch.from_numpy(x[:1]))
    assert torch.equal(y[:, -1], preds)


@pytest.mark.parametrize("targets", [INPUTS, ("c", "a")])
def test_forecast_from_a_stored_stream_equals_the_library_forecast_of_its_history(targets: tuple[str, ...]) -> None:
    served = _served(targets=targets)
    history = _rows(np.random.default_rng(4), 12)
    new, preds = served.advance(torch.zeros(1, served.state_width), np.array([True]), [history])
    tails = torch.cat([torch.from_numpy(history[-1:]), preds], dim=1)
    assert served.forecast_method(6) == "rollout"
    got = served.forecast(new, tails, 6)
    want = forecast(
        served.model, torch.from_numpy(history)[None], 6, "rollout", target_index=target_indices(INPUTS, targets)
    )
    assert got.shape == (1, 6, len(targets))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(served.forecast(new, tails, 1)[:, 0], preds)  # the first step is the stored prediction


def test_direct_forecast_uses_the_models_head_within_its_horizon() -> None:
    served = _served(horizon=4)
    history = _rows(np.random.default_rng(5), 6)
    new, preds = served.advance(torch.zeros(1, served.state_width), np.array([True]), [history])
    tails = torch.cat([torch.from_numpy(history[-1:]), preds], dim=1)
    assert served.forecast_method(3) == "direct" and served.forecast_method(9) == "rollout"
    torch.testing.assert_close(
        served.forecast(new, tails, 3), forecast(served.model, torch.from_numpy(history)[None], 3, "direct")
    )


def test_flat_layout_and_bytes_round_trip() -> None:
    served = _served([hs.LSTM(3), hs.GRU(2)])
    assert served.layout == (("layers.0.h", 3), ("layers.0.c", 3), ("layers.1.h", 2))
    flat = torch.arange(16, dtype=torch.float32).reshape(2, 8)
    state = served.to_state(flat)
    assert state.layers[0].c.tolist() == [[3.0, 4.0, 5.0], [11.0, 12.0, 13.0]]
    assert state.layers[1].h.tolist() == [[6.0, 7.0], [14.0, 15.0]]
    assert torch.equal(served.to_flat(state), flat)
    blobs = [served.to_bytes(row) for row in flat.numpy()]
    assert len(blobs[0]) == 32 and torch.equal(served.from_bytes(blobs), flat)
    with pytest.raises(hs.ConfigError, match=r"^a stored state has 12 bytes but spec \[lstm 3, gru 2\] needs 32; "):
        served.from_bytes([b"x" * 12])


def test_scaling_is_the_scalers_own_arithmetic() -> None:
    served = _served(targets=("c", "a"))
    raw = np.random.default_rng(6).normal(50, 10, (5, 3))
    assert np.array_equal(served.normalise(raw), served.scaler.transform(raw).astype(np.float32))
    y = np.random.default_rng(7).normal(size=(5, 2)).astype(np.float32)
    assert np.array_equal(
        served.targets_original(y), served.scaler.select([2, 0]).inverse_transform(y.astype(np.float64))
    )


def test_models_that_cannot_be_served_step_by_step_are_refused() -> None:
    from hiddenstate.models.segrnn import SegRNN

    seg = SegRNN(n_vars=2, input_len=8, horizon=4, seg_len=4, d_model=8)
    with pytest.raises(hs.ConfigError, match=r"^model kind 'segrnn' forecasts from whole windows"):
        ServedModel.build(seg, None, ["a", "b"], ["a", "b"])
    model = hs.SequenceModel(3, 3, [hs.LSTM(4)])
    with pytest.raises(
        hs.ConfigError, match=r"^the model takes 3 inputs and gives 3 targets, but the run names 2 input"
    ):
        ServedModel.build(model, None, ["a", "b"], INPUTS)
    scaler = StandardScaler.fit(np.ones((4, 3)))
    with pytest.raises(hs.ConfigError, match=r"^a target is not among the inputs, so the run's input scaler cannot"):
        ServedModel.build(model, scaler, INPUTS, ("a", "b", "zz"))


# -- the served copy and its backend ----------------------------------------------------------------


needs_fused = pytest.mark.skipif(not fused_available(), reason="no C compiler to build the fused kernel")


def _lstm(hidden: int, cells: tuple[str, ...] = ("lstm", "lstm")) -> hs.SequenceModel:
    torch.manual_seed(0)
    return hs.SequenceModel(3, 3, [hs.LayerSpec(cell, hidden) for cell in cells])


def _build(model: hs.SequenceModel, **kw: str) -> ServedModel:
    return ServedModel.build(model, None, INPUTS, INPUTS, **kw)


@needs_fused
def test_serving_leaves_the_callers_model_alone() -> None:
    model = _lstm(8).double().train()  # float64 and in training mode: the service wants float32, eval
    before = {k: v.clone() for k, v in model.state_dict().items()}
    served = _build(model)
    assert served.backend == "fused" and served.model is not model
    assert model.rnn.backend == "torch" and model.training and next(model.parameters()).dtype == torch.float64
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), served.model.parameters(), strict=True))


@needs_fused
def test_auto_serves_on_the_fused_kernel_only_up_to_the_measured_width(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FUSED_MAX_HIDDEN == 32
    assert _build(_lstm(32)).backend == "fused"
    assert _build(_lstm(33)).backend == "torch"
    assert _build(_lstm(128)).backend == "torch"
    assert _build(_lstm(8, ("lstm", "gru"))).backend == "torch"
    assert _build(_lstm(8), backend="torch").backend == "torch"
    assert _build(_lstm(128), backend="fused").backend == "fused"
    monkeypatch.setenv("HIDDENSTATE_SERVE_BACKEND", "torch")
    assert _build(_lstm(8)).backend == "torch"
    with pytest.raises(hs.ConfigError, match="unknown serving backend 'numba'"):
        _build(_lstm(8), backend="numba")


@needs_fused
def test_the_fused_copy_agrees_with_the_default_backend() -> None:
    model = _lstm(16)
    fused, default = _build(model), _build(model, backend="torch")
    assert (fused.backend, default.backend) == ("fused", "torch")
    rng = np.random.default_rng(3)
    xs = [_rows(rng, steps) for steps in (1, 4, 1, 7, 4)]
    starts = _states(default, len(xs))
    fresh = np.array([False, True, False, False, True])
    (new_f, pred_f), (new_d, pred_d) = fused.advance(starts, fresh, xs), default.advance(starts, fresh, xs)
    torch.testing.assert_close(new_f, new_d, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred_f, pred_d, rtol=0, atol=1e-6)
    one_step = torch.tensor([0, 2])  # the group of streams with 1 step: one call of the library's own model
    with torch.no_grad():
        y, state = model(torch.from_numpy(np.stack([xs[0], xs[2]])), default.to_state(starts[one_step]))
    assert torch.equal(pred_d[one_step], y[:, -1]) and torch.equal(new_d[one_step], default.to_flat(state))

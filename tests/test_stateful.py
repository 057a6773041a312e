"""Stateful: Keras ``stateful=True`` done right; the one object that carries state between calls."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import hiddenstate as hs
from hiddenstate.errors import ConfigError, ShapeError, StateError


def raises(exc: type[Exception], message: str) -> Any:
    """pytest.raises matching the whole message literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return a.shape == b.shape and float((a - b).detach().abs().max()) < tol


def seed_model(**kw: Any) -> hs.SequenceModel:
    return hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)], **kw).double()


def test_two_calls_equal_one_long_call() -> None:
    model = seed_model()
    x = torch.randn(10, 96, 2, dtype=torch.float64)
    y_whole, s_whole = model(x)

    w = hs.Stateful(model, batch_size=10)
    assert float(sum(t.abs().sum() for t in w.state.tensors())) == 0.0  # zeros before the first call
    y1 = w(x[:, :48])
    y2 = w(x[:, 48:])
    assert close(torch.cat([y1, y2], dim=1), y_whole)
    assert w.state.allclose(s_whole, rtol=0, atol=1e-10)
    # The carried state is cut from the graph: gradients stop at the call boundary.
    assert not any(t.requires_grad for t in w.state.tensors())
    assert y2.requires_grad


def test_wraps_a_bare_stack() -> None:
    rnn = hs.StackedRNN(2, [hs.GRU(4), hs.LSTM(3)]).double()
    x = torch.randn(2, 10, 2, dtype=torch.float64)
    w = hs.Stateful(rnn, batch_size=2)
    y = torch.cat([w(x[:, :3]), w(x[:, 3:])], dim=1)
    y_ref, s_ref = rnn(x)
    assert close(y, y_ref) and w.state.allclose(s_ref, rtol=0, atol=1e-10)
    assert w.state_spec == rnn.state_spec


def test_state_is_read_only() -> None:
    w = hs.Stateful(seed_model(), batch_size=10)
    message = "Stateful.state is read-only; use set_state(state) or set_state(layer=i, h=..., c=...)"
    with raises(AttributeError, message):
        w.state = hs.State.zeros(w.state_spec, 10, dtype=torch.float64)  # type: ignore[misc]
    with raises(AttributeError, message):
        w.state = torch.zeros(10, 8)  # type: ignore[misc]
    assert float(w.state.layers[0].h.abs().sum()) == 0.0


def test_set_state_whole() -> None:
    model = seed_model()
    w = hs.Stateful(model, batch_size=10)
    spec = w.state_spec
    s0 = hs.State.from_tensors(
        spec, [(torch.rand(10, n, dtype=torch.float64), torch.randn(10, n, dtype=torch.float64)) for n in (8, 16)]
    )
    w.set_state(s0)
    assert w.state is s0
    x = torch.randn(10, 12, 2, dtype=torch.float64)
    y_ref, s_ref = model(x, s0)
    assert close(w(x), y_ref) and w.state.allclose(s_ref, rtol=0, atol=1e-12)

    with raises(StateError, "set_state: state has batch 4, expected batch=10"):
        w.set_state(hs.State.zeros(spec, 4, dtype=torch.float64))
    with raises(StateError, "set_state: spec [gru 8, gru 16] differs from the model's [lstm 8, lstm 16]"):
        w.set_state(hs.State.zeros(hs.StateSpec([("gru", 8), ("gru", 16)]), 10, dtype=torch.float64))
    with raises(
        StateError,
        "set_state: state is torch.float32 on cpu but the model is torch.float64 on cpu; "
        "convert it with state.to(device=..., dtype=...)",
    ):
        w.set_state(hs.State.zeros(spec, 10))
    with raises(StateError, "set_state: expected a State, got tuple"):
        w.set_state((torch.zeros(1, 10, 8), torch.zeros(1, 10, 8)))  # type: ignore[arg-type]
    with raises(StateError, "set_state takes either a whole state or layer=, h=, c=, not both"):
        w.set_state(s0, layer=0, h=torch.zeros(10, 8))
    with raises(StateError, "set_state needs a State or layer=i with h= and/or c="):
        w.set_state(layer=0)
    with raises(StateError, "set_state needs a State or layer=i with h= and/or c="):
        w.set_state()


def test_set_state_one_layer() -> None:
    w = hs.Stateful(seed_model(), batch_size=10)
    before = w.state
    h1 = torch.full((10, 16), 0.5, dtype=torch.float64)
    w.set_state(layer=1, h=h1)
    assert torch.equal(w.state.layers[1].h, h1)
    assert w.state.layers[1].c is before.layers[1].c and w.state.layers[0] is before.layers[0]
    w.set_state(layer=0, h=torch.ones(10, 8, dtype=torch.float64), c=-torch.ones(10, 8, dtype=torch.float64))
    assert float(w.state.layers[0].c.sum()) == -80.0 and torch.equal(w.state.layers[1].h, h1)
    w.set_state(layer=0, c=torch.arange(8.0, dtype=torch.float64), broadcast=True)
    assert torch.equal(w.state.layers[0].c[9], torch.arange(8.0, dtype=torch.float64))

    with raises(StateError, "layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (10, 2)"):
        w.set_state(layer=0, h=torch.zeros(10, 2, dtype=torch.float64))
    with raises(StateError, "layer 1 (lstm, hidden 16) `c`: expected shape (batch=10, hidden=16), got (10, 2)"):
        w.set_state(layer=1, c=torch.zeros(10, 2, dtype=torch.float64))
    with raises(StateError, "layer 1 (lstm, hidden 16) `h`: contains NaN or inf (1 non-finite values)"):
        bad = torch.zeros(10, 16, dtype=torch.float64)
        bad[3, 3] = float("nan")
        w.set_state(layer=1, h=bad)
    with raises(StateError, "layer index 2 out of range for a 2-layer spec [lstm 8, lstm 16]"):
        w.set_state(layer=2, h=torch.zeros(10, 8, dtype=torch.float64))
    # Nothing above changed the carried state.
    assert torch.equal(w.state.layers[1].h, h1)


def test_reset_state_resets_only_masked_rows() -> None:
    model = seed_model()
    w = hs.Stateful(model, batch_size=4)
    x = torch.randn(4, 20, 2, dtype=torch.float64)
    w(x)
    carried = w.state
    w.reset_state(torch.tensor([False, True, True, False]))
    for before, after in zip(carried.tensors(), w.state.tensors(), strict=True):
        assert torch.equal(after[[0, 3]], before[[0, 3]])
        assert float(after[[1, 2]].abs().sum()) == 0.0
        assert float(before[[1, 2]].abs().sum()) > 0.0
    # A reset row then runs exactly like a fresh sequence.
    x2 = torch.randn(4, 7, 2, dtype=torch.float64)
    y = w(x2)
    y_fresh, _ = model(x2[1:3])
    assert close(y[1:3], y_fresh)
    w.reset_state()
    assert float(sum(t.abs().sum() for t in w.state.tensors())) == 0.0
    with raises(ShapeError, "reset mask: expected shape (batch=4,), got (3,)"):
        w.reset_state(torch.tensor([True, False, True]))


def test_reset_state_goes_to_the_learned_state() -> None:
    model = seed_model(state_encoder="learned")
    with torch.no_grad():
        for p in model.learned.parameters():  # type: ignore[union-attr]
            p.fill_(0.3)
    w = hs.Stateful(model, batch_size=3)
    fresh = model.initial_state(3).detach()
    assert w.state.allclose(fresh, rtol=0, atol=0)  # the initial carried state is the learned one
    w(torch.randn(3, 5, 2, dtype=torch.float64))
    carried = w.state
    w.reset_state(torch.tensor([True, False, False]))
    assert w.state.select([0]).allclose(fresh.select([0]), rtol=0, atol=0)
    assert w.state.select([1, 2]).allclose(carried.select([1, 2]), rtol=0, atol=0)


def test_wrong_batch_refused() -> None:
    w = hs.Stateful(seed_model(), batch_size=10)
    with raises(
        StateError,
        "Stateful(batch_size=10) got a batch of 4 rows; row i of each call continues row i of the previous one, "
        "so the batch size is fixed",
    ):
        w(torch.zeros(4, 96, 2, dtype=torch.float64))
    with raises(ShapeError, "x: expected shape (batch=10, steps, input), got (10, 2)"):
        w(torch.zeros(10, 2, dtype=torch.float64))
    with raises(ConfigError, "batch_size must be a positive int, got 0"):
        hs.Stateful(seed_model(), batch_size=0)


def test_cond_sets_the_state_from_the_encoder() -> None:
    model = seed_model(state_encoder="cond:2")
    w = hs.Stateful(model, batch_size=10)
    x1, x2 = torch.randn(10, 48, 2, dtype=torch.float64), torch.randn(10, 48, 2, dtype=torch.float64)
    cond = x1[:, -1]  # the true observation just before the second minibatch
    w(x1)
    carried = w.state
    y = w(x2, cond=cond)
    # The call ran from the encoded state, not the carried one...
    y_ref, s_ref = model(x2, model.encoder(cond))  # type: ignore[misc]
    assert close(y, y_ref) and w.state.allclose(s_ref, rtol=0, atol=1e-12)
    y_carried, _ = model(x2, carried)
    assert not close(y, y_carried, tol=1e-6)
    # ...with gradients into the encoder, and the new state carried on afterwards.
    y.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # type: ignore[union-attr]
    x3 = torch.randn(10, 5, 2, dtype=torch.float64)
    y3_ref, _ = model(x3, s_ref)
    assert close(w(x3), y3_ref)
    # Without cond before the first call, an encoder model starts from zeros.
    assert float(sum(t.abs().sum() for t in hs.Stateful(model, batch_size=10).state.tensors())) == 0.0
    with raises(ShapeError, "cond: expected shape (batch=10, cond=2), got (9, 2)"):
        w(x3, cond=torch.zeros(9, 2, dtype=torch.float64))


def test_cond_without_an_encoder_is_refused() -> None:
    w = hs.Stateful(seed_model(), batch_size=10)
    with raises(
        ConfigError,
        "cond= sets the state through a state encoder, and this model has none; "
        "build it with SequenceModel(..., state_encoder='cond:N')",
    ):
        w(torch.zeros(10, 5, 2, dtype=torch.float64), cond=torch.zeros(10, 2, dtype=torch.float64))

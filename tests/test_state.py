"""StateSpec and State: structure, validation with exact messages, and every derived state."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import torch

import hiddenstate as hs
from hiddenstate.errors import ConfigError, ShapeError, StateError

LSTM_8_16 = hs.StateSpec([("lstm", 8), ("lstm", 16)])
GRU_8_16 = hs.StateSpec([("gru", 8), ("gru", 16)])


def raises(exc: type[Exception], message: str) -> Any:
    """pytest.raises matching the whole message literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def filled(spec: hs.StateSpec, batch: int, start: float = 0.0) -> hs.State:
    """A State whose every value is distinct: layer i tensor k row r col j is predictable."""
    entries = []
    offset = start
    for ls in spec.layers:
        tensors = []
        for _ in ls.tensor_names:
            n = batch * ls.hidden_size
            tensors.append(torch.arange(offset, offset + n, dtype=torch.float32).view(batch, ls.hidden_size) / 100)
            offset += n
        entries.append(tuple(tensors))
    return hs.State.from_tensors(spec, entries)


def z(*shape: int, **kw: object) -> torch.Tensor:
    return torch.zeros(*shape, **kw)  # type: ignore[arg-type]


# -- StateSpec --------------------------------------------------------------------------------


def test_state_size_is_keras_like() -> None:
    assert LSTM_8_16.state_size == ((8, 8), (16, 16))
    assert GRU_8_16.state_size == ((8,), (16,))
    assert hs.StateSpec([("lstm", 4), ("rnn", 3), ("gru", 2)]).state_size == ((4, 4), (3,), (2,))
    assert LSTM_8_16.num_layers == 2
    assert LSTM_8_16.layers == (hs.LSTM(8), hs.LSTM(16))


def test_names_are_stable() -> None:
    assert LSTM_8_16.names == ("layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c")
    assert hs.StateSpec([("gru", 8), ("lstm", 4)]).names == ("layers.0.h", "layers.1.h", "layers.1.c")


def test_specs_compare_by_value() -> None:
    same = hs.StateSpec([hs.LSTM(8), hs.LSTM(16)])
    assert same == LSTM_8_16
    assert hash(same) == hash(LSTM_8_16)
    assert len({same, LSTM_8_16}) == 1
    assert LSTM_8_16 != GRU_8_16
    assert LSTM_8_16 != hs.StateSpec([("lstm", 16), ("lstm", 8)])
    assert LSTM_8_16 != [("lstm", 8), ("lstm", 16)]
    assert repr(LSTM_8_16) == "StateSpec([('lstm', 8), ('lstm', 16)])"


def test_fingerprint_is_stable() -> None:
    # These strings are stored in checkpoints and compared by the service: they must never drift.
    assert hs.StateSpec([("lstm", 8)]).fingerprint() == "hs1-lstm8-78f4361761"
    assert LSTM_8_16.fingerprint() == "hs1-lstm8-lstm16-d8e476bc02"
    assert hs.StateSpec([("gru", 8)]).fingerprint() == "hs1-gru8-f5c5c65146"
    assert hs.StateSpec([("lstm", 8)] * 20).fingerprint() == "hs1-20layers-a7c3a97f45"
    assert hs.StateSpec([hs.LSTM(8), hs.LSTM(16)]).fingerprint() == LSTM_8_16.fingerprint()
    fingerprints = {
        s.fingerprint()
        for s in (LSTM_8_16, GRU_8_16, hs.StateSpec([("lstm", 16), ("lstm", 8)]), hs.StateSpec([("lstm", 8)]))
    }
    assert len(fingerprints) == 4


def test_to_json_round_trip() -> None:
    data = LSTM_8_16.to_json()
    assert data == [{"cell": "lstm", "hidden_size": 8}, {"cell": "lstm", "hidden_size": 16}]
    back = hs.StateSpec.from_json(json.loads(json.dumps(data)))
    assert back == LSTM_8_16
    assert back.fingerprint() == LSTM_8_16.fingerprint()


def test_spec_errors() -> None:
    with raises(ConfigError, "unknown cell kind 'lstn'; expected one of lstm, gru, rnn"):
        hs.StateSpec([("lstn", 8)])
    with raises(ConfigError, "a StateSpec needs at least one layer"):
        hs.StateSpec([])
    with raises(ConfigError, "lstm hidden_size must be at least 1, got 0"):
        hs.StateSpec([("lstm", 0)])
    with raises(ConfigError, "gru hidden_size must be an int, got 8.0"):
        hs.StateSpec([("gru", 8.0)])  # type: ignore[list-item]
    with raises(ConfigError, "a StateSpec in JSON is a list of layers, got dict"):
        hs.StateSpec.from_json({"cell": "lstm"})


# -- construction and validation --------------------------------------------------------------


def test_zeros() -> None:
    s = hs.State.zeros(LSTM_8_16, 10, dtype=torch.float64)
    assert s.batch_size == 10
    assert s.spec == LSTM_8_16
    assert s.dtype == torch.float64
    assert s.device == torch.device("cpu")
    assert [tuple(t.shape) for t in s.tensors()] == [(10, 8), (10, 8), (10, 16), (10, 16)]
    assert all(float(t.abs().sum()) == 0.0 for t in s.tensors())
    g = hs.State.zeros(GRU_8_16, 3)
    assert g.layers[0].c is None and g.layers[1].c is None
    with raises(StateError, "batch_size must be at least 1, got 0"):
        hs.State.zeros(LSTM_8_16, 0)
    with raises(StateError, "layer 0 (gru, hidden 8) `h`: a State has at least one row, got (0, 8)"):
        hs.State.from_tensors(GRU_8_16, [z(0, 8), z(0, 16)])


def test_from_tensors_keeps_values() -> None:
    h0, c0, h1, c1 = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 16), torch.randn(4, 16)
    s = hs.State.from_tensors(LSTM_8_16, [(h0, c0), (h1, c1)])
    assert s.layers[0].h is h0 and s.layers[0].c is c0
    assert s.layers[1].h is h1 and s.layers[1].c is c1
    # GRU: a bare tensor or a 1-tuple per layer.
    g0, g1 = torch.randn(4, 8), torch.randn(4, 16)
    for entries in ([g0, g1], [(g0,), (g1,)], [g0, (g1,)]):
        g = hs.State.from_tensors(GRU_8_16, entries)
        assert torch.equal(g.layers[0].h, g0) and torch.equal(g.layers[1].h, g1)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [(z(10, 2), z(10, 8)), (z(10, 16), z(10, 16))],
            "layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (10, 2)",
        ),
        (
            [(z(10, 8), z(10, 3)), (z(10, 16), z(10, 16))],
            "layer 0 (lstm, hidden 8) `c`: expected shape (batch=10, hidden=8), got (10, 3)",
        ),
        (
            [(z(10, 8), z(10, 8)), (z(10, 8), z(10, 16))],
            "layer 1 (lstm, hidden 16) `h`: expected shape (batch=10, hidden=16), got (10, 8)",
        ),
        (
            [(z(10, 8), z(10, 8)), (z(10, 16), z(10, 2))],
            "layer 1 (lstm, hidden 16) `c`: expected shape (batch=10, hidden=16), got (10, 2)",
        ),
        (
            [(z(10, 8), z(10, 8)), (z(9, 16), z(9, 16))],
            "layer 1 (lstm, hidden 16) `h`: expected shape (batch=10, hidden=16), got (9, 16)",
        ),
        (
            [(z(1, 10, 8), z(10, 8)), (z(10, 16), z(10, 16))],
            "layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (1, 10, 8)",
        ),
    ],
    ids=["layer0-h", "layer0-c", "layer1-h", "layer1-c", "batch", "3d"],
)
def test_wrong_shape_names_layer_and_tensor(entries: list, message: str) -> None:  # type: ignore[type-arg]
    with raises(StateError, message):
        hs.State.from_tensors(LSTM_8_16, entries)


def test_issue_example_message() -> None:
    s = hs.State.zeros(LSTM_8_16, 10)
    with raises(StateError, "layer 1 (lstm, hidden 16) `c`: expected shape (batch=10, hidden=16), got (10, 2)"):
        s.replace(1, c=z(10, 2))


def test_c_given_to_gru() -> None:
    with raises(StateError, "layer 0 (gru, hidden 8) `c`: a gru layer has no cell state; pass h only"):
        hs.State.from_tensors(GRU_8_16, [(z(4, 8), z(4, 8)), z(4, 16)])
    with raises(StateError, "layer 1 (rnn, hidden 3) `c`: a rnn layer has no cell state; pass h only"):
        hs.State.from_tensors(hs.StateSpec([("gru", 2), ("rnn", 3)]), [z(4, 2), (z(4, 3), z(4, 3))])
    with raises(StateError, "layer 1 (gru, hidden 16) `c`: a gru layer has no cell state; pass h only"):
        hs.State.zeros(GRU_8_16, 4).replace(1, c=z(4, 16))
    with raises(StateError, "layer 0 (gru, hidden 8) `c`: a gru layer has no cell state; pass h only"):
        hs.State(GRU_8_16, [hs.LayerState(z(4, 8), z(4, 8)), hs.LayerState(z(4, 16))])


def test_missing_c() -> None:
    message = "layer 0 (lstm, hidden 8) `c`: missing; an lstm layer needs both h and c"
    with raises(StateError, message):
        hs.State.from_tensors(LSTM_8_16, [z(4, 8), (z(4, 16), z(4, 16))])
    with raises(StateError, message):
        hs.State.from_tensors(LSTM_8_16, [(z(4, 8),), (z(4, 16), z(4, 16))])
    with raises(StateError, message):
        hs.State(LSTM_8_16, [hs.LayerState(z(4, 8)), hs.LayerState(z(4, 16), z(4, 16))])


def test_wrong_layer_count() -> None:
    with raises(StateError, "expected 2 layers for spec [lstm 8, lstm 16], got 1"):
        hs.State.from_tensors(LSTM_8_16, [(z(4, 8), z(4, 8))])
    with raises(StateError, "expected 2 layers for spec [gru 8, gru 16], got 3"):
        hs.State.from_tensors(GRU_8_16, [z(4, 8), z(4, 16), z(4, 16)])
    with raises(StateError, "expected 2 layers for spec [gru 8, gru 16], got 1"):
        hs.State(GRU_8_16, [hs.LayerState(z(4, 8))])
    with raises(StateError, "from_tensors takes one entry per layer (a list), got Tensor"):
        hs.State.from_tensors(LSTM_8_16, z(2, 4, 8))  # type: ignore[arg-type]
    with raises(StateError, "layer 0 (lstm, hidden 8): expected (h, c), got int"):
        hs.State.from_tensors(LSTM_8_16, [1, (z(4, 16), z(4, 16))])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_refused(bad: float) -> None:
    h1 = z(4, 16)
    h1[2, 5] = bad
    with raises(StateError, "layer 1 (lstm, hidden 16) `h`: contains NaN or inf (1 non-finite values)"):
        hs.State.from_tensors(LSTM_8_16, [(z(4, 8), z(4, 8)), (h1, z(4, 16))])
    c0 = torch.full((4, 8), bad)
    with raises(StateError, "layer 0 (lstm, hidden 8) `c`: contains NaN or inf (32 non-finite values)"):
        hs.State.zeros(LSTM_8_16, 4).replace(0, c=c0)


def test_dtype_mismatch() -> None:
    with raises(
        StateError, "layer 1 (lstm, hidden 16) `h`: dtype torch.float64 differs from layer 0 `h`'s torch.float32"
    ):
        hs.State.from_tensors(LSTM_8_16, [(z(4, 8), z(4, 8)), (z(4, 16, dtype=torch.float64), z(4, 16))])
    with raises(StateError, "layer 0 (gru, hidden 8) `h`: expected a floating dtype, got torch.int64"):
        hs.State.from_tensors(GRU_8_16, [z(4, 8, dtype=torch.int64), z(4, 16)])
    # replace blames the tensor being replaced, not its neighbour.
    with raises(
        StateError,
        "layer 1 (lstm, hidden 16) `h`: torch.float64 on cpu differs from the state's torch.float32 on cpu; "
        "convert it with .to(dtype=..., device=...)",
    ):
        hs.State.zeros(LSTM_8_16, 4).replace(1, h=z(4, 16, dtype=torch.float64))


def test_device_mismatch() -> None:
    # The meta device stands in for a second device, so this runs on a CPU-only machine.
    with raises(StateError, "layer 1 (lstm, hidden 16) `c`: device meta differs from layer 0 `h`'s cpu"):
        hs.State.from_tensors(LSTM_8_16, [(z(4, 8), z(4, 8)), (z(4, 16), z(4, 16, device="meta"))])
    with raises(
        StateError,
        "layer 0 (lstm, hidden 8) `h`: torch.float32 on meta differs from the state's torch.float32 on cpu; "
        "convert it with .to(dtype=..., device=...)",
    ):
        hs.State.zeros(LSTM_8_16, 4).replace(0, h=z(4, 8, device="meta"))


def test_broadcast_only_when_asked() -> None:
    h0 = torch.arange(8.0)
    with raises(
        StateError,
        "layer 0 (lstm, hidden 8) `h`: expected shape (batch=4, hidden=8), got (8,); "
        "pass broadcast=True to copy one (hidden,) vector to every row",
    ):
        hs.State.from_tensors(LSTM_8_16, [(h0, z(4, 8)), (z(4, 16), z(4, 16))])
    s = hs.State.from_tensors(LSTM_8_16, [(h0, z(4, 8)), (z(4, 16), z(4, 16))], broadcast=True)
    assert s.batch_size == 4
    assert torch.equal(s.layers[0].h, h0.expand(4, 8))
    # Every tensor a vector: the batch size comes from batch_size=.
    vectors = [(torch.ones(8), torch.full((8,), 2.0)), (torch.ones(16), torch.zeros(16))]
    s = hs.State.from_tensors(LSTM_8_16, vectors, broadcast=True, batch_size=3)
    assert [tuple(t.shape) for t in s.tensors()] == [(3, 8), (3, 8), (3, 16), (3, 16)]
    assert torch.equal(s.layers[0].c, torch.full((3, 8), 2.0))
    with raises(StateError, "layer 0 (gru, hidden 8) `h`: broadcast needs a batch size; pass batch_size="):
        hs.State.from_tensors(GRU_8_16, [z(8), z(16)], broadcast=True)
    with raises(StateError, "layer 0 (lstm, hidden 8) `h`: expected shape (hidden=8,) to broadcast, got (7,)"):
        hs.State.from_tensors(LSTM_8_16, [(z(7), z(4, 8)), (z(4, 16), z(4, 16))], broadcast=True)
    # replace broadcasts too, only when asked.
    base = hs.State.zeros(LSTM_8_16, 2)
    with raises(
        StateError,
        "layer 1 (lstm, hidden 16) `h`: expected shape (batch=2, hidden=16), got (16,); "
        "pass broadcast=True to copy one (hidden,) vector to every row",
    ):
        base.replace(1, h=torch.ones(16))
    assert torch.equal(base.replace(1, h=torch.ones(16), broadcast=True).layers[1].h, torch.ones(2, 16))


def test_immutable() -> None:
    s = hs.State.zeros(LSTM_8_16, 2)
    with raises(AttributeError, "State is immutable; use replace(layer, h=..., c=...) instead of setting 'spec'"):
        s.spec = GRU_8_16  # type: ignore[misc]
    with raises(AttributeError, "State is immutable; use replace(layer, h=..., c=...) instead of setting '_layers'"):
        s._layers = ()  # type: ignore[misc]
    with raises(AttributeError, "State is immutable; cannot delete '_layers'"):
        del s._layers
    assert isinstance(s.layers, tuple)
    with pytest.raises(AttributeError):
        s.layers[0].h = z(2, 8)  # type: ignore[misc]  # LayerState is a frozen dataclass
    assert s.spec == LSTM_8_16 and s.batch_size == 2


def test_copies() -> None:
    """copy.copy gives the State itself (nothing in it can change); copy.deepcopy gives the same
    values in tensors of its own, for LSTM and GRU layers alike."""
    s = filled(hs.StateSpec([("lstm", 8), ("gru", 16)]), 3)
    assert copy.copy(s) is s
    d = copy.deepcopy(s)
    assert d is not s and d.spec == s.spec and d.allclose(s, atol=0.0)
    assert d.layers[1].c is None
    for a, b in zip(s.layers, d.layers, strict=True):
        for t, u in zip(a.tensors(), b.tensors(), strict=True):
            assert u.data_ptr() != t.data_ptr()
    before = s.layers[0].c.clone()
    s.layers[0].c.add_(1.0)  # an in-place change to the original's tensor leaves the copy as it was
    assert torch.equal(d.layers[0].c, before) and not torch.equal(d.layers[0].c, s.layers[0].c)
    held = {"a": s, "b": s}  # the memo keeps shared States shared
    again = copy.deepcopy(held)
    assert again["a"] is again["b"]


# -- derived states ---------------------------------------------------------------------------


def test_replace_returns_new_validated_state() -> None:
    s = hs.State.zeros(LSTM_8_16, 3)
    h1 = torch.randn(3, 16)
    t = s.replace(1, h=h1)
    assert t is not s
    assert torch.equal(t.layers[1].h, h1)
    assert t.layers[1].c is s.layers[1].c and t.layers[0] is s.layers[0]
    assert float(s.layers[1].h.abs().sum()) == 0.0  # the original is untouched
    u = t.replace(0, c=torch.ones(3, 8))
    assert torch.equal(u.layers[0].c, torch.ones(3, 8)) and torch.equal(u.layers[1].h, h1)
    # Lists become tensors of the state's dtype.
    d = hs.State.zeros(GRU_8_16, 2, dtype=torch.float64).replace(0, h=[[0.5] * 8, [0.25] * 8])
    assert d.layers[0].h.dtype == torch.float64 and float(d.layers[0].h.sum()) == 6.0
    with raises(StateError, "layer index 2 out of range for a 2-layer spec [lstm 8, lstm 16]"):
        s.replace(2, h=z(3, 8))
    with raises(StateError, "layer index True out of range for a 2-layer spec [lstm 8, lstm 16]"):
        s.replace(True, h=z(3, 8))  # type: ignore[arg-type]


def test_detach() -> None:
    h = torch.randn(2, 8, requires_grad=True)
    s = hs.State.from_tensors(hs.StateSpec([("gru", 8)]), [h * 2])
    assert s.layers[0].h.requires_grad
    d = s.detach()
    assert not d.layers[0].h.requires_grad
    assert torch.equal(d.layers[0].h, s.layers[0].h)


def test_reset_to_zeros() -> None:
    s = filled(LSTM_8_16, 4, start=1.0)
    mask = torch.tensor([False, True, False, True])
    r = s.reset(mask)
    for before, after in zip(s.tensors(), r.tensors(), strict=True):
        assert torch.equal(after[[0, 2]], before[[0, 2]])
        assert float(after[[1, 3]].abs().sum()) == 0.0
    assert r.spec == s.spec and r.batch_size == 4
    with raises(ShapeError, "reset mask: expected shape (batch=4,), got (3,)"):
        s.reset(torch.tensor([True, False, True]))
    with raises(ShapeError, "reset mask: expected shape (batch=4,), got list"):
        s.reset([True, False, True, False])  # type: ignore[arg-type]


def test_reset_to_other_state() -> None:
    s = filled(LSTM_8_16, 3)
    other = filled(LSTM_8_16, 3, start=1000.0)
    r = s.reset(torch.tensor([True, False, True]), to=other)
    for mine, theirs, after in zip(s.tensors(), other.tensors(), r.tensors(), strict=True):
        assert torch.equal(after[0], theirs[0]) and torch.equal(after[2], theirs[2])
        assert torch.equal(after[1], mine[1])
    # Gradients flow through `to`, so a learned initial state trains through resets.
    h0 = torch.ones(3, 8, requires_grad=True)
    learned = hs.State.from_tensors(hs.StateSpec([("gru", 8)]), [h0 * 3])
    r = hs.State.zeros(learned.spec, 3).reset(torch.tensor([True, False, False]), to=learned)
    r.layers[0].h.sum().backward()
    assert h0.grad is not None and h0.grad[0].tolist() == [3.0] * 8 and float(h0.grad[1:].abs().sum()) == 0.0
    with raises(
        StateError,
        "reset(to=...): expected a State of spec [lstm 8, lstm 16] and batch 3, got [lstm 8, lstm 16] batch 2",
    ):
        s.reset(torch.tensor([True, False, True]), to=filled(LSTM_8_16, 2))
    with raises(StateError, "reset(to=...): torch.float64 on cpu differs from the state's torch.float32 on cpu"):
        s.reset(torch.tensor([True, False, True]), to=hs.State.zeros(LSTM_8_16, 3, dtype=torch.float64))


def test_select_and_cat() -> None:
    s = filled(LSTM_8_16, 5)
    picked = s.select([3, 1])
    assert picked.batch_size == 2
    for full, part in zip(s.tensors(), picked.tensors(), strict=True):
        assert torch.equal(part, full[[3, 1]])
    by_mask = s.select(torch.tensor([True, False, False, True, False]))
    assert torch.equal(by_mask.layers[1].c, s.layers[1].c[[0, 3]])
    assert torch.equal(s.select(slice(1, 3)).layers[0].h, s.layers[0].h[1:3])
    # Split into streams and merge back: the same State.
    parts = [s.select([i]) for i in range(5)]
    assert hs.State.cat(parts).allclose(s, rtol=0, atol=0)
    assert hs.State.cat([s.select([0, 1]), s.select([2, 3, 4])]).allclose(s, rtol=0, atol=0)
    with raises(StateError, "select: no rows selected; a State has at least one row"):
        s.select([])
    with raises(StateError, "select: no rows selected; a State has at least one row"):
        s.select(torch.zeros(5, dtype=torch.bool))
    with raises(ShapeError, "select rows: index out of range for batch 5"):
        s.select([5])
    with raises(ShapeError, "select mask: expected shape (batch=5,), got (2,)"):
        s.select(torch.tensor([True, False]))
    with raises(ShapeError, "select rows: expected integer indices or a boolean mask, got torch.float32"):
        s.select(torch.tensor([0.0, 1.0]))
    with raises(StateError, "State.cat needs at least one state"):
        hs.State.cat([])
    with raises(StateError, "State.cat item 1: spec [gru 8, gru 16] differs from item 0's [lstm 8, lstm 16]"):
        hs.State.cat([s, hs.State.zeros(GRU_8_16, 2)])
    with raises(StateError, "State.cat item 1: torch.float64 on cpu differs from item 0's torch.float32 on cpu"):
        hs.State.cat([s, hs.State.zeros(LSTM_8_16, 2, dtype=torch.float64)])
    with raises(StateError, "State.cat item 1: expected a State, got Tensor"):
        hs.State.cat([s, z(2, 8)])  # type: ignore[list-item]


def test_to() -> None:
    s = filled(GRU_8_16, 2)
    d = s.to(dtype=torch.float64)
    assert d.dtype == torch.float64 and all(t.dtype == torch.float64 for t in d.tensors())
    assert torch.equal(d.layers[1].h, s.layers[1].h.double())
    assert s.to(device="meta").device == torch.device("meta")
    assert s.to().allclose(s, rtol=0, atol=0)
    with raises(StateError, "a State holds floating tensors; cannot cast to torch.int32"):
        s.to(dtype=torch.int32)


def test_to_dict_from_dict_round_trip() -> None:
    s = filled(LSTM_8_16, 3)
    d = s.to_dict()
    assert list(d) == ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"]
    assert d["layers.1.c"] is s.layers[1].c
    back = hs.State.from_dict(LSTM_8_16, d)
    assert back.allclose(s, rtol=0, atol=0)
    g = filled(GRU_8_16, 2)
    assert list(g.to_dict()) == ["layers.0.h", "layers.1.h"]
    assert hs.State.from_dict(GRU_8_16, g.to_dict()).allclose(g, rtol=0, atol=0)


def test_from_dict_errors() -> None:
    good = hs.State.zeros(LSTM_8_16, 2).to_dict()
    with raises(
        StateError,
        "unknown state tensor 'layers.2.h' for spec [lstm 8, lstm 16]; "
        "expected names layers.0.h, layers.0.c, layers.1.h, layers.1.c",
    ):
        hs.State.from_dict(LSTM_8_16, {**good, "layers.2.h": z(2, 8)})
    with raises(
        StateError, "unknown state tensor 'layers.0.c' for spec [gru 8, gru 16]; expected names layers.0.h, layers.1.h"
    ):
        hs.State.from_dict(GRU_8_16, {"layers.0.h": z(2, 8), "layers.0.c": z(2, 8), "layers.1.h": z(2, 16)})
    without_c = {k: v for k, v in good.items() if k != "layers.1.c"}
    with raises(StateError, "layer 1 (lstm, hidden 16) `c`: missing; an lstm layer needs both h and c"):
        hs.State.from_dict(LSTM_8_16, without_c)
    without_h = {k: v for k, v in good.items() if k != "layers.0.h"}
    with raises(StateError, "layer 0 (lstm, hidden 8) `h`: missing"):
        hs.State.from_dict(LSTM_8_16, without_h)
    # every tensor two rows, consistent with each other, against the batch size asked for
    with raises(StateError, "layer 0 (lstm, hidden 8) `h`: expected shape (batch=1, hidden=8), got (2, 8)"):
        hs.State.from_dict(LSTM_8_16, good, batch_size=1)


def test_a_list_that_is_not_a_tensor_says_why() -> None:
    message = "layer 0 (lstm, hidden 8) `h`: expected a tensor, got a list that is not numbers in rows of one length"
    good = hs.State.zeros(LSTM_8_16, 1).to_dict()
    for bad in ([["a"] * 8], [[0.1] * 8, [0.1] * 7]):
        with raises(StateError, message):
            hs.State.from_dict(LSTM_8_16, {**good, "layers.0.h": bad})
        with raises(StateError, message):
            hs.State.zeros(LSTM_8_16, 1).replace(0, h=bad)


def test_replace_checks_the_batch_of_the_state_it_replaces_into() -> None:
    s = hs.State.zeros(LSTM_8_16, 4)
    with raises(StateError, "layer 0 (lstm, hidden 8) `h`: expected shape (batch=4, hidden=8), got (5, 8)"):
        s.replace(0, h=z(5, 8))


def test_to_torch_from_torch() -> None:
    spec = hs.StateSpec([("lstm", 8)] * 3)
    s = filled(spec, 4)
    h_n, c_n = s.to_torch()  # type: ignore[misc]
    assert tuple(h_n.shape) == (3, 4, 8) and tuple(c_n.shape) == (3, 4, 8)
    assert torch.equal(h_n[2], s.layers[2].h) and torch.equal(c_n[1], s.layers[1].c)
    assert hs.State.from_torch(spec, (h_n, c_n)).allclose(s, rtol=0, atol=0)
    gspec = hs.StateSpec([("gru", 5)] * 2)
    g = filled(gspec, 3)
    g_n = g.to_torch()
    assert isinstance(g_n, torch.Tensor) and tuple(g_n.shape) == (2, 3, 5)
    assert hs.State.from_torch(gspec, g_n).allclose(g, rtol=0, atol=0)
    assert hs.State.from_torch(gspec, (g_n,)).allclose(g, rtol=0, atol=0)


def test_to_torch_refused_for_mixed_sizes() -> None:
    message = "{} needs every layer to share one cell kind and hidden size, as nn.LSTM does; spec is [lstm 8, lstm 16]"
    with raises(StateError, message.format("to_torch")):
        hs.State.zeros(LSTM_8_16, 2).to_torch()
    with raises(StateError, message.format("from_torch")):
        hs.State.from_torch(LSTM_8_16, (z(2, 2, 8), z(2, 2, 8)))
    with raises(StateError, "from_torch for an lstm spec takes the pair (h_n, c_n)"):
        hs.State.from_torch(hs.StateSpec([("lstm", 8)] * 2), z(2, 4, 8))
    with raises(StateError, "from_torch `h_n`: expected shape (layers=2, batch, hidden=8), got (3, 4, 8)"):
        hs.State.from_torch(hs.StateSpec([("lstm", 8)] * 2), (z(3, 4, 8), z(2, 4, 8)))
    with raises(StateError, "layer 0 (gru, hidden 5) `h`: expected shape (batch=4, hidden=5), got (4, 6)"):
        hs.State.from_torch(hs.StateSpec([("gru", 5)] * 2), z(2, 4, 6))


def test_allclose_and_repr() -> None:
    s = filled(LSTM_8_16, 2)
    assert s.allclose(s.replace(0, h=s.layers[0].h + 1e-9))
    assert not s.allclose(s.replace(0, h=s.layers[0].h + 1e-2))
    assert not s.allclose(filled(LSTM_8_16, 3))
    assert not s.allclose(hs.State.zeros(GRU_8_16, 2))
    assert repr(s) == "State(spec=[lstm 8, lstm 16], batch=2, dtype=torch.float32, device=cpu)"

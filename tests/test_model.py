"""StackedRNN, StateEncoder, LearnedInitialState and SequenceModel: values, not only shapes."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hiddenstate as hs
from hiddenstate.errors import ConfigError, ShapeError, StateError
from hiddenstate.model import build_model

TORCH_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
LAYER = {"lstm": hs.LSTM, "gru": hs.GRU, "rnn": hs.RNN}


def raises(exc: type[Exception], message: str) -> Any:
    """pytest.raises matching the whole message literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return a.shape == b.shape and float((a - b).detach().abs().max()) < tol


def random_state(spec: hs.StateSpec, batch: int) -> hs.State:
    """A float64 State with h in (-1, 1) and c of a few units, like a trained LSTM's."""
    entries = []
    for ls in spec.layers:
        h = torch.tanh(torch.randn(batch, ls.hidden_size, dtype=torch.float64))
        entries.append((h, 2 * torch.randn(batch, ls.hidden_size, dtype=torch.float64)) if ls.has_c else h)
    return hs.State.from_tensors(spec, entries)


# -- equivalence with torch.nn -----------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_single_layer_equals_torch(cell: str) -> None:
    ref = TORCH_CELLS[cell](3, 7, batch_first=True).double()
    rnn = hs.StackedRNN(3, [LAYER[cell](7)]).double()
    rnn.cells[0].load_state_dict(ref.state_dict())
    x = torch.randn(4, 25, 3, dtype=torch.float64)  # (batch, steps, input)

    # From zeros.
    y_ref, hn_ref = ref(x)
    y, state = rnn(x)
    assert close(y, y_ref)
    if cell == "lstm":
        assert close(state.layers[0].h, hn_ref[0][0]) and close(state.layers[0].c, hn_ref[1][0])
    else:
        assert state.layers[0].c is None and close(state.layers[0].h, hn_ref[0])

    # From a given state.
    s0 = random_state(rnn.state_spec, 4)
    hx = (s0.layers[0].h[None], s0.layers[0].c[None]) if cell == "lstm" else s0.layers[0].h[None]
    y_ref, hn_ref = ref(x, hx)
    y, state = rnn(x, s0)
    assert close(y, y_ref)
    assert close(state.layers[0].h, (hn_ref[0] if cell == "lstm" else hn_ref)[0])
    # The final h of a one-layer stack is its last output.
    assert close(state.layers[0].h, y[:, -1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_equal_size_stack_equals_multilayer_torch(cell: str) -> None:
    num_layers, hidden = 3, 6
    ref = TORCH_CELLS[cell](2, hidden, num_layers=num_layers, batch_first=True).double()
    rnn = hs.StackedRNN(2, [LAYER[cell](hidden)] * num_layers).double()
    for k, layer in enumerate(rnn.cells):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        layer.load_state_dict({f"{n}_l0": getattr(ref, f"{n}_l{k}") for n in names})
    x = torch.randn(5, 30, 2, dtype=torch.float64)
    s0 = random_state(rnn.state_spec, 5)

    y_ref, hn_ref = ref(x, s0.to_torch())
    y, state = rnn(x, s0)
    assert close(y, y_ref)
    assert state.allclose(hs.State.from_torch(rnn.state_spec, hn_ref), rtol=0, atol=1e-10)
    final = state.to_torch()
    if cell == "lstm":
        assert close(final[0], hn_ref[0]) and close(final[1], hn_ref[1])
    else:
        assert close(final, hn_ref)  # type: ignore[arg-type]


def test_dropout_between_layers_only() -> None:
    rnn = hs.StackedRNN(2, [hs.LSTM(8), hs.GRU(8)], dropout=0.5).double()
    plain = hs.StackedRNN(2, [hs.LSTM(8), hs.GRU(8)]).double()
    plain.load_state_dict(rnn.state_dict())
    x = torch.randn(3, 10, 2, dtype=torch.float64)
    rnn.eval()
    assert close(rnn(x)[0], plain(x)[0])  # eval: dropout is off
    rnn.train()
    outputs, _ = rnn.layer_outputs(x)
    ref_outputs, _ = plain.layer_outputs(x)
    assert close(outputs[0], ref_outputs[0])  # nothing before the first layer's output
    assert not close(outputs[1], ref_outputs[1], tol=1e-3)  # dropout on the way into layer 1


def test_layer_outputs_end_in_the_final_state() -> None:
    rnn = hs.StackedRNN(2, [hs.LSTM(8), hs.GRU(4), hs.RNN(3)]).double()
    x = torch.randn(2, 12, 2, dtype=torch.float64)
    outputs, state = rnn.layer_outputs(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 12, 8), (2, 12, 4), (2, 12, 3)]
    for out, layer in zip(outputs, state.layers, strict=True):
        assert close(out[:, -1], layer.h, tol=1e-14)
    y, state2 = rnn(x)
    assert torch.equal(y, outputs[-1]) and state2.allclose(state, rtol=0, atol=0)
    assert rnn.output_size == 3 and rnn.state_spec.state_size == ((8, 8), (4,), (3,))


# -- chunked run equals whole run ----------------------------------------------------------------

layer_st = st.tuples(st.sampled_from(["lstm", "gru", "rnn"]), st.integers(1, 6))


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.lists(layer_st, min_size=1, max_size=3),
    input_size=st.integers(1, 3),
    batch=st.integers(1, 3),
    steps=st.integers(2, 24),
    cuts=st.lists(st.integers(1, 23), max_size=5),
    seed=st.integers(0, 2**16),
)
def test_chunked_run_equals_whole_run(
    layers: list[tuple[str, int]], input_size: int, batch: int, steps: int, cuts: list[int], seed: int
) -> None:
    torch.manual_seed(seed)
    model = hs.SequenceModel(input_size, 2, hs.StateSpec(layers)).double()
    x = torch.randn(batch, steps, input_size, dtype=torch.float64)
    y_whole, s_whole = model(x)

    bounds = [0, *sorted({c for c in cuts if c < steps}), steps]
    pieces, state = [], None
    for a, b in itertools.pairwise(bounds):
        y, state = model(x[:, a:b], state)
        pieces.append(y)
    assert state is not None
    assert close(torch.cat(pieces, dim=1), y_whole, tol=1e-6)
    assert state.allclose(s_whole, rtol=0, atol=1e-6)


# -- reset ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", [None, "learned", "cond:2"])
def test_reset_row_equals_fresh_row(encoder: str | None) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.GRU(5)], state_encoder=encoder).double()
    if model.learned is not None:
        with torch.no_grad():  # make the learned state non-zero so the test can tell it apart
            for p in model.learned.parameters():
                p.normal_()
    x1 = torch.randn(4, 20, 2, dtype=torch.float64)
    x2 = torch.randn(4, 15, 2, dtype=torch.float64)
    cond = torch.randn(4, 2, dtype=torch.float64) if encoder == "cond:2" else None
    _, carried = model(x1, cond=cond)
    mask = torch.tensor([False, True, False, False])

    y, after = model(x2, carried, cond=cond, reset=mask)
    y_fresh, fresh = model(x2[1:2], cond=None if cond is None else cond[1:2])
    y_kept, kept = model(x2, carried)

    assert close(y[1:2], y_fresh) and after.select([1]).allclose(fresh, rtol=0, atol=1e-10)
    rows = [0, 2, 3]
    assert close(y[rows], y_kept[rows]) and after.select(rows).allclose(kept.select(rows), rtol=0, atol=1e-10)
    assert not close(y[1], y_kept[1], tol=1e-6)  # the reset did change row 1


def test_reset_needs_cond_for_a_cond_model() -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)], state_encoder="cond:3")
    state = hs.State.zeros(model.state_spec, 2)
    with raises(
        ShapeError, "this model sets its state from cond (state_encoder='cond:3'); pass cond of shape (batch=2, cond=3)"
    ):
        model(torch.zeros(2, 5, 2), state, reset=torch.tensor([True, False]))
    with raises(ShapeError, "reset mask: expected shape (batch=2,), got (3,)"):
        model(torch.zeros(2, 5, 2), state, cond=torch.zeros(2, 3), reset=torch.tensor([True, False, True]))


# -- StateEncoder and LearnedInitialState --------------------------------------------------------


def test_state_encoder_bounds_h_and_separates_c() -> None:
    spec = hs.StateSpec([("lstm", 8), ("gru", 16)])
    enc = hs.StateEncoder(2, spec).double()
    cond = 3 * torch.randn(64, 2, dtype=torch.float64)
    s = enc(cond)
    assert s.spec == spec and s.batch_size == 64
    for layer in s.layers:
        assert float(layer.h.detach().abs().max()) < 1.0
    # Huge inputs saturate tanh (to 1.0 in floating point) but never pass it.
    assert all(float(layer.h.detach().abs().max()) <= 1.0 for layer in enc(1e6 * cond).layers)
    assert s.layers[1].c is None
    # c has its own output: unbounded, and not a function of h.
    c = s.layers[0].c
    assert c is not None and float(c.detach().abs().max()) > 1.0
    assert close(c, enc.c_heads["0"](cond)) and close(s.layers[0].h, torch.tanh(enc.h_heads[0](cond)))
    assert set(enc.c_heads) == {"0"} and len(enc.h_heads) == 2
    with raises(ShapeError, "cond: expected shape (batch, cond=2), got (64, 3)"):
        enc(torch.zeros(64, 3, dtype=torch.float64))
    with raises(ConfigError, "cond_size must be at least 1, got 0"):
        hs.StateEncoder(0, spec)


def test_state_encoder_with_hidden_layer() -> None:
    enc = hs.StateEncoder(3, hs.StateSpec([("lstm", 4)]), hidden=5)
    cond = torch.randn(2, 3)
    s = enc(cond)
    z = enc.trunk(cond)  # type: ignore[misc]
    assert tuple(z.shape) == (2, 5)
    assert close(s.layers[0].h, torch.tanh(enc.h_heads[0](z)), tol=1e-6)


def test_gradients_reach_the_encoder() -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)], state_encoder="cond:2")
    x, cond = torch.randn(10, 12, 2), torch.randn(10, 2)
    y, _ = model(x, cond=cond)
    y.pow(2).mean().backward()
    assert model.encoder is not None
    grads = [p.grad for p in model.encoder.parameters()]
    assert len(grads) == 8  # h and c heads (weight, bias) for two layers
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_learned_initial_state() -> None:
    spec = hs.StateSpec([("lstm", 3), ("gru", 2)])
    init = hs.LearnedInitialState(spec)
    s = init(4).detach()
    assert s.batch_size == 4 and all(float(t.abs().sum()) == 0.0 for t in s.tensors())  # starts at zeros
    with torch.no_grad():
        init.h0[0].copy_(torch.tensor([10.0, -10.0, 0.5]))
        init.c0[0].copy_(torch.tensor([3.0, -4.0, 5.0]))
    s = init(4).detach()
    assert torch.allclose(s.layers[0].h, torch.tanh(torch.tensor([10.0, -10.0, 0.5])).expand(4, 3))
    assert float(s.layers[0].h.abs().max()) < 1.0 + 1e-12
    assert torch.equal(s.layers[0].c, torch.tensor([[3.0, -4.0, 5.0]] * 4))
    assert s.layers[1].c is None
    # It trains: gradients reach the parameters through a model.
    model = hs.SequenceModel(2, 1, spec, state_encoder="learned")
    y, _ = model(torch.randn(4, 6, 2))
    y.sum().backward()
    assert model.learned is not None
    assert float(model.learned.h0[0].grad.abs().sum()) > 0 and float(model.learned.c0[0].grad.abs().sum()) > 0


# -- SequenceModel ----------------------------------------------------------------------------------


def test_sequence_model_head() -> None:
    model = hs.SequenceModel(2, 3, [hs.LSTM(8), hs.LSTM(16)]).double()
    x = torch.randn(5, 9, 2, dtype=torch.float64)
    y, state = model(x)
    out, state2 = model.rnn(x)
    assert close(y, model.head(out)) and state.allclose(state2, rtol=0, atol=0)
    assert model.state_spec == hs.StateSpec([("lstm", 8), ("lstm", 16)])


def test_softmax_head_sums_to_one() -> None:
    model = hs.SequenceModel(2, 4, [hs.GRU(8)], head_activation="softmax").double()
    with torch.no_grad():
        y, _ = model(torch.randn(3, 11, 2, dtype=torch.float64))
    assert tuple(y.shape) == (3, 11, 4)
    assert close(y.sum(dim=-1), torch.ones(3, 11, dtype=torch.float64), tol=1e-12)
    assert float(y.min()) > 0
    tanh_model = hs.SequenceModel(2, 4, [hs.GRU(8)], head_activation="tanh")
    assert float(tanh_model(100 * torch.randn(3, 11, 2))[0].detach().abs().max()) <= 1.0


def test_config_round_trip() -> None:
    model = hs.SequenceModel(
        2, 3, [hs.LSTM(8), hs.GRU(16)], dropout=0.25, head_activation="tanh", state_encoder="cond:2", horizon=4
    )
    config = model.config()
    assert config == {
        "kind": "sequence",
        "input_size": 2,
        "output_size": 3,
        "layers": [{"cell": "lstm", "hidden_size": 8}, {"cell": "gru", "hidden_size": 16}],
        "dropout": 0.25,
        "head_activation": "tanh",
        "state_encoder": "cond:2",
        "horizon": 4,
    }
    rebuilt = build_model(config)
    assert isinstance(rebuilt, hs.SequenceModel)
    assert rebuilt.config() == config
    rebuilt.load_state_dict(model.state_dict())  # same parameter names and shapes
    model.eval()
    rebuilt.eval()
    x, cond = torch.randn(2, 7, 2), torch.randn(2, 2)
    y1, s1 = model(x, cond=cond)
    y2, s2 = rebuilt(x, cond=cond)
    assert torch.equal(y1, y2) and s1.allclose(s2, rtol=0, atol=0)
    assert torch.equal(model.forecast_direct(s1), rebuilt.forecast_direct(s2))
    # The list of known kinds grows as other modules register theirs; match the fixed part.
    with pytest.raises(ConfigError, match=r"^unknown model kind 'nope'; known kinds: (.*, )?sequence(, .*)?$"):
        build_model({"kind": "nope"})
    with raises(ConfigError, "model config is missing 'layers'"):
        hs.SequenceModel.from_config({"kind": "sequence", "input_size": 2, "output_size": 2})


def test_forecast_direct() -> None:
    model = hs.SequenceModel(2, 3, [hs.LSTM(8)], horizon=5).double()
    _, state = model(torch.randn(4, 10, 2, dtype=torch.float64))
    out = model.forecast_direct(state)
    assert tuple(out.shape) == (4, 5, 3)
    flat = model.direct_head(state.layers[-1].h)  # type: ignore[misc]
    assert close(out[:, 2, 1], flat[:, 2 * 3 + 1])
    with raises(ConfigError, "this model has no direct head; build it with horizon=H > 0"):
        hs.SequenceModel(2, 3, [hs.LSTM(8)]).forecast_direct(state)


def test_sequence_model_errors() -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)])
    with raises(ShapeError, "x: expected shape (batch, steps, input=2), got (10, 2)"):
        model(torch.zeros(10, 2))
    with raises(ShapeError, "x: expected shape (batch, steps, input=2), got (10, 96, 3)"):
        model(torch.zeros(10, 96, 3))
    with raises(ShapeError, "x: expected shape (batch, steps, input=2), got list"):
        model([[0.0, 0.0]])  # type: ignore[arg-type]
    with raises(StateError, "state has batch 4 but x has batch 10"):
        model(torch.zeros(10, 5, 2), hs.State.zeros(model.state_spec, 4))
    with raises(StateError, "state spec [gru 8, gru 16] differs from the model's [lstm 8, lstm 16]"):
        model(torch.zeros(10, 5, 2), hs.State.zeros(hs.StateSpec([("gru", 8), ("gru", 16)]), 10))
    with raises(
        StateError, "state: expected a hiddenstate.State, got tuple; build one with State.from_tensors(spec, ...)"
    ):
        model(torch.zeros(10, 5, 2), (torch.zeros(1, 10, 8), torch.zeros(1, 10, 8)))  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_a_state_of_another_dtype_or_device_than_x_is_refused(backend: str) -> None:
    # The fused kernel would read a float64 or float16 state's memory as float32: wrong numbers
    # (or past the end of the buffer) instead of an error.
    model = hs.SequenceModel(2, 2, [hs.LSTM(8)])
    model.rnn.set_backend(backend)
    x = torch.zeros(3, 5, 2)
    for dtype in (torch.float64, torch.float16):
        with raises(
            StateError,
            f"state is {dtype} on cpu but x is torch.float32 on cpu; convert it with state.to(device=..., dtype=...)",
        ):
            model(x, hs.State.zeros(model.state_spec, 3, dtype=dtype))
    with raises(
        StateError,
        "state is torch.float32 on meta but x is torch.float32 on cpu; convert it with state.to(device=..., dtype=...)",
    ):
        model(x, hs.State.zeros(model.state_spec, 3, device="meta"))
    y, _ = model(x, hs.State.zeros(model.state_spec, 3))  # the matching state still runs
    assert tuple(y.shape) == (3, 5, 2)


def test_cond_errors() -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)], state_encoder="cond:2")
    with raises(
        ShapeError,
        "this model sets its state from cond (state_encoder='cond:2'); pass cond of shape (batch=10, cond=2)",
    ):
        model(torch.zeros(10, 96, 2))
    with raises(ShapeError, "cond: expected shape (batch=10, cond=2), got (9, 2)"):
        model(torch.zeros(10, 96, 2), cond=torch.zeros(9, 2))
    with raises(ShapeError, "cond: expected shape (batch, cond=2), got (10, 3)"):
        model(torch.zeros(10, 96, 2), cond=torch.zeros(10, 3))
    with raises(ShapeError, "cond: expected shape (batch, cond=2), got ndarray"):
        model.initial_state(10, cond=torch.zeros(10, 2).numpy())  # type: ignore[arg-type]


def test_config_errors() -> None:
    with raises(ConfigError, "unknown state_encoder 'cond'; expected None, 'cond:N' or 'learned'"):
        hs.SequenceModel(2, 2, [hs.LSTM(8)], state_encoder="cond")
    with raises(ConfigError, "state_encoder 'cond:x': expected 'cond:N' with an int N"):
        hs.SequenceModel(2, 2, [hs.LSTM(8)], state_encoder="cond:x")
    with raises(ConfigError, "unknown head_activation 'gelu'; expected one of tanh, sigmoid, relu, softmax"):
        hs.SequenceModel(2, 2, [hs.LSTM(8)], head_activation="gelu")
    with raises(ConfigError, "output_size must be a positive int, got 0"):
        hs.SequenceModel(2, 0, [hs.LSTM(8)])
    with raises(ConfigError, "horizon must be an int >= 0, got -1"):
        hs.SequenceModel(2, 2, [hs.LSTM(8)], horizon=-1)
    with raises(ConfigError, "input_size must be a positive int, got 0"):
        hs.StackedRNN(0, [hs.LSTM(8)])
    with raises(ConfigError, "dropout must be in [0, 1), got 1.0"):
        hs.StackedRNN(2, [hs.LSTM(8)], dropout=1.0)
    with raises(ConfigError, "unknown cell kind 'lstn'; expected one of lstm, gru, rnn"):
        hs.StackedRNN(2, [("lstn", 8)])  # type: ignore[list-item]


# -- no Python loop over time ---------------------------------------------------------------------


def _spy_kernels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, bool]]:
    """Record every call of the recurrent kernels: (name, steps, layers, state contiguous)."""
    calls: list[tuple[str, int, int, bool]] = []

    def spy(name: str) -> Any:
        original = getattr(torch._VF, name)

        def kernel(x: torch.Tensor, hx: Any, weights: list[torch.Tensor], *args: Any) -> Any:
            tensors = [hx] if isinstance(hx, torch.Tensor) else list(hx)
            layers = int(args[1])  # (has_biases, num_layers, dropout, train, bidirectional, batch_first)
            calls.append((name, int(x.shape[1]), layers, all(t.is_contiguous() for t in tensors)))
            return original(x, hx, weights, *args)

        return kernel

    for name in ("lstm", "gru", "rnn_tanh"):
        monkeypatch.setattr(torch._VF, name, spy(name))
    return calls


def test_one_kernel_call_per_layer_whatever_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_kernels(monkeypatch)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.GRU(16), hs.RNN(4)], state_encoder="learned")
    for steps in (1, 96, 500):
        calls.clear()
        model(torch.zeros(3, steps, 2))
        assert calls == [("lstm", steps, 1, True), ("gru", steps, 1, True), ("rnn_tanh", steps, 1, True)]

    # Expanded (broadcast) states reach the kernels contiguous, as cuDNN requires.
    state = hs.State.from_tensors(
        model.state_spec, [(torch.ones(8), torch.ones(8)), torch.ones(16), torch.ones(4)], broadcast=True, batch_size=3
    )
    assert not state.layers[0].h.is_contiguous()
    calls.clear()
    model(torch.zeros(3, 10, 2), state)
    assert calls == [("lstm", 10, 1, True), ("gru", 10, 1, True), ("rnn_tanh", 10, 1, True)]


@pytest.mark.parametrize("cell", [hs.LSTM, hs.GRU, hs.RNN])
def test_runs_of_same_sized_layers_take_one_multi_layer_call(monkeypatch: pytest.MonkeyPatch, cell: Any) -> None:
    """Layers 0-1 share a kind and size, so they go through one 2-layer kernel call, exactly as
    one ``nn.LSTM(num_layers=2, dropout=p)`` would; layer 2 differs and gets its own call. The
    result equals the layer-by-layer run (layer_outputs) bit for bit, dropout masks included."""
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [cell(8), cell(8), cell(4)], dropout=0.3)
    x = torch.randn(5, 12, 2)
    start = model.initial_state(5)
    calls = _spy_kernels(monkeypatch)
    torch.manual_seed(1)
    y, state = model.rnn(x, start)
    name = calls[0][0]
    assert calls == [(name, 12, 2, True), (name, 12, 1, True)]
    torch.manual_seed(1)
    outputs, ref_state = model.rnn.layer_outputs(x, start)
    assert torch.equal(y, outputs[-1])
    for got, want in zip(state.layers, ref_state.layers, strict=True):
        assert torch.equal(got.h, want.h)
        assert got.c is None or torch.equal(got.c, want.c)


def test_direct_kernel_call_sees_swapped_and_parametrized_weights() -> None:
    """The default backend calls the kernels with the cells' current parameters: weights swapped
    in by torch.func.functional_call, and parametrized ones, are the weights used."""
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)])
    other = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)])
    x = torch.randn(3, 5, 2)
    swapped = torch.func.functional_call(model, dict(other.named_parameters()), (x,))
    assert torch.equal(swapped[0], other(x)[0])
    assert not torch.equal(model(x)[0], other(x)[0])

    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    plain = model(x)[0]
    parametrize.register_parametrization(model.rnn.cells[1], "weight_hh_l0", Double())
    with torch.no_grad():
        model.rnn.cells[1].parametrizations.weight_hh_l0.original.mul_(0.5)  # 2 * (w / 2) = w
    torch.testing.assert_close(model(x)[0], plain, rtol=0, atol=1e-6)

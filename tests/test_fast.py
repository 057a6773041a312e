"""The fused CPU backend (hiddenstate._kernels.fused): the same function as nn.LSTM, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hiddenstate as hs
from hiddenstate._kernels import fused as fast

pytestmark = pytest.mark.skipif(not fast.fused_available(), reason="no C compiler to build the fused kernel")


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize(("batch", "steps", "n_in", "hidden"), [(4, 7, 3, 8), (1, 1, 2, 5), (3, 5, 9, 17)])
def test_fused_layer_equals_nn_lstm_values_and_gradients(batch: int, steps: int, n_in: int, hidden: int) -> None:
    cell = nn.LSTM(n_in, hidden, batch_first=True)
    x = torch.randn(batch, steps, n_in, requires_grad=True)
    h0 = torch.randn(1, batch, hidden, requires_grad=True)
    c0 = torch.randn(1, batch, hidden, requires_grad=True)
    leaves = (x, h0, c0, *cell.parameters())
    results = []
    for run in (cell, lambda x, hx: fast.fused_lstm(cell, x, hx)):
        for t in leaves:
            t.grad = None
        out, (h_n, c_n) = run(x, (h0, c0))
        # every output feeds the loss, so every incoming gradient is exercised
        (out.square().sum() + 0.3 * h_n.sum() + 0.7 * c_n.square().sum()).backward()
        results.append([out.detach(), h_n.detach(), c_n.detach(), *_grads(*leaves)])
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_layer_reads_weights_that_are_not_contiguous() -> None:
    cell = nn.LSTM(3, 5, batch_first=True)
    with torch.no_grad():  # the same values, held transposed (as load_state_dict(assign=True) may leave them)
        cell.weight_ih_l0 = nn.Parameter(cell.weight_ih_l0.t().contiguous().t())
        cell.weight_hh_l0 = nn.Parameter(cell.weight_hh_l0.t().contiguous().t())
    assert not cell.weight_ih_l0.is_contiguous()
    x = torch.randn(4, 6, 3)
    results = []
    for run in (cell, lambda x: fast.fused_lstm(cell, x)):
        cell.zero_grad()
        out, _ = run(x)
        out.square().sum().backward()
        results.append([out.detach(), cell.weight_ih_l0.grad.clone(), cell.weight_hh_l0.grad.clone()])
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_layer_passes_gradcheck_in_float64() -> None:
    cell = nn.LSTM(3, 4, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return fast._LSTMLayer.apply(x, h0[0], c0[0], *weights)

    assert torch.autograd.gradcheck(f, (x, h0, c0, *cell.parameters()))


def test_outputs_have_nn_lstm_memory_layout() -> None:
    # dropout draws its mask in memory order; matching layouts is what makes masks match
    cell = nn.LSTM(2, 8, batch_first=True)
    x = torch.randn(10, 6, 2)
    assert fast.fused_lstm(cell, x)[0].stride() == cell(x)[0].stride() == (8, 80, 1)


def test_strided_input_gets_gradient_in_its_own_shape() -> None:
    cell = nn.LSTM(2, 3, batch_first=True)
    big = torch.randn(4, 9, 2, requires_grad=True)
    x = big[:, 2:7]  # not contiguous in time
    fast.fused_lstm(cell, x)[0].sum().backward()
    got = big.grad.clone()
    big.grad = None
    cell(x)[0].sum().backward()
    torch.testing.assert_close(got, big.grad, rtol=1e-5, atol=1e-6)
    assert got[:, :2].abs().sum() == 0 and got[:, 7:].abs().sum() == 0


def _seed_model(backend: str) -> hs.SequenceModel:
    torch.manual_seed(3)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(6)], dropout=0.25)
    model.rnn.set_backend(backend)
    return model


def test_model_on_fused_backend_trains_like_torch_backend_with_the_same_dropout_masks() -> None:
    x, target = torch.randn(5, 12, 2), torch.randn(5, 12, 2)
    results = []
    for backend in ("torch", "fused"):
        model = _seed_model(backend)
        torch.manual_seed(7)  # the same seed draws the same dropout masks on both backends
        y, state = model(x)
        y2, state2 = model(x, state)  # a second chunk, carried state
        ((y - target).square().mean() + (y2 - target).square().mean()).backward()
        results.append([y, y2, *state2.tensors(), *(p.grad for p in model.parameters())])
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)


def test_inference_keeps_no_graph_and_streaming_equals_one_call() -> None:
    model = _seed_model("fused").eval()
    x = torch.randn(3, 10, 2)
    with torch.no_grad():
        y, state = model(x)
        wrapper = hs.Stateful(model, batch_size=3)
        steps = torch.cat([wrapper(x[:, t : t + 1]) for t in range(10)], dim=1)
    assert y.grad_fn is None and not state.layers[0].c.requires_grad
    torch.testing.assert_close(steps, y, rtol=0, atol=1e-6)
    assert wrapper.state.allclose(state, atol=1e-6)
    model.rnn.set_backend("torch")
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], y, rtol=1e-5, atol=1e-6)


def test_trainer_epoch_on_fused_backend_matches_torch_backend() -> None:
    a = torch.randn(2 * 4 * 8 + 2, 2).numpy()
    batches = hs.StatefulBatches([a], [a], batch_size=4, steps=8)
    weights = []
    for backend in ("torch", "fused"):
        model = _seed_model(backend)
        hs.Trainer(model, hs.TrainConfig(epochs=2, lr=0.01, progress=False)).fit(batches)
        weights.append(model.state_dict())
    for name, want in weights[0].items():
        torch.testing.assert_close(weights[1][name], want, rtol=1e-5, atol=1e-5, msg=name)


def test_set_backend_refuses_what_it_cannot_run() -> None:
    rnn = hs.StackedRNN(2, [hs.LSTM(4), hs.GRU(3)])
    with pytest.raises(hs.ConfigError, match=r"^layer 1 \(gru, hidden 3\): the fused backend runs lstm layers only"):
        rnn.set_backend("fused")
    assert rnn.backend == "torch"
    with pytest.raises(hs.ConfigError, match=r"^unknown backend 'fast'; expected 'torch' or 'fused'$"):
        rnn.set_backend("fast")


def test_fused_backend_names_the_device_and_dtype_it_cannot_take() -> None:
    model = _seed_model("fused")
    with pytest.raises(hs.ConfigError, match=r"^the fused backend runs on the CPU, got x on meta"):
        fast.fused_lstm(model.rnn.cells[0], torch.empty(2, 3, 2, device="meta"))
    model = model.to(torch.bfloat16)
    with pytest.raises(hs.ConfigError, match=r"takes float32 or float64 .*got x torch.bfloat16"):
        model(torch.zeros(2, 3, 2, dtype=torch.bfloat16))


def test_a_half_precision_state_under_cpu_autocast_is_read_as_its_values() -> None:
    # check_input lets the state's dtype differ from x's under autocast; the kernel reads x's dtype
    rnn = _seed_model("fused").rnn.eval()
    x = torch.randn(3, 5, 2)
    with torch.no_grad():
        state = rnn(x)[1].to(dtype=torch.bfloat16)  # a carried state, as autocast leaves it
        want = rnn(x, state.to(dtype=torch.float32))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = rnn(x, state)
    assert torch.equal(got[0], want[0]) and got[1].allclose(want[1], atol=0)


def test_switching_back_to_torch_restores_the_default_path() -> None:
    model = _seed_model("fused")
    model.rnn.set_backend("torch")
    assert model.rnn.backend == "torch" and model.rnn._fused is None
    assert "backend" not in model.config()  # a run-time choice, not part of the saved model


def test_build_reports_a_missing_or_failing_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HIDDENSTATE_CACHE_DIR", str(tmp_path))
    fast.build_kernel.cache_clear()
    try:
        monkeypatch.setenv("CC", "no-such-compiler-hs")
        with pytest.raises(hs.ConfigError, match=r"found no C compiler \('no-such-compiler-hs'; set CC to one\)"):
            fast.build_kernel()
        monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
        with pytest.raises(hs.ConfigError, match=r"could not build _fused_lstm.c with .*false: exit status 1"):
            fast.build_kernel()
        assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    finally:
        fast.build_kernel.cache_clear()

"""The GPU path: cuDNN runs each layer's whole sequence, and bf16/fp16 mixed precision works.

Skipped without CUDA. Measured figures for the GPU live in docs/performance.md.
"""

from __future__ import annotations

import pytest
import torch

import hiddenstate as hs
from hiddenstate._kernels import fused as fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model() -> hs.SequenceModel:
    torch.manual_seed(0)
    return hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)], dropout=0.2).cuda()


def _ops(model: hs.SequenceModel, steps: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(10, steps, 2, device="cuda")
    model(x)  # warm up cuDNN's plans
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        y, _ = model(x)
        y.sum().backward()
        torch.cuda.synchronize()
    return [e.name for e in prof.events()]


def test_cudnn_runs_each_layer_in_one_call_whatever_the_length() -> None:
    model = _model()
    short, long = _ops(model, 16), _ops(model, 256)
    # one cuDNN call per layer forward (and one backward), not one per step
    assert sum(n == "aten::_cudnn_rnn" for n in long) == 2
    assert sum(n == "aten::_cudnn_rnn_backward" for n in long) == 2
    cpu_ops = lambda names: sum(n.startswith("aten::") for n in names)  # noqa: E731
    assert cpu_ops(long) == cpu_ops(short)  # 16x the steps, the same host-side work


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_matches_fp32_loosely(precision: str) -> None:
    model = _model().eval()
    x = torch.randn(10, 96, 2, device="cuda")
    with torch.no_grad():
        want, want_state = model(x)
        with precision.autocast("cuda", precision):
            got, state = model(x)
    assert got.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=3e-2)
    torch.testing.assert_close(state.layers[1].h.float(), want_state.layers[1].h, rtol=0, atol=3e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_step_keeps_float32_weights(precision: str) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    scaler = precision.grad_scaler(precision)
    x, target = torch.randn(10, 96, 2, device="cuda"), torch.randn(10, 96, 2, device="cuda")
    losses = []
    for _ in range(20):
        with precision.autocast("cuda", precision):
            y, _ = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), target)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]


def test_trainer_trains_on_cuda() -> None:
    a = torch.randn(4 * 8 * 3 + 2, 2).numpy()
    batches = hs.StatefulBatches([a], [a], batch_size=4, steps=8)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8)])
    history = hs.Trainer(model, hs.TrainConfig(epochs=2, device="cuda", progress=False)).fit(batches)
    assert next(model.parameters()).is_cuda and history.train_loss[-1] < history.train_loss[0]


def test_fused_backend_refuses_cuda_tensors() -> None:
    model = _model()
    with pytest.raises(hs.ConfigError, match=r"^the fused backend runs on the CPU, got x on cuda"):
        fast.fused_lstm(model.rnn.cells[0], torch.zeros(2, 3, 2, device="cuda"))


def test_same_sized_layers_run_layer_by_layer_on_cuda_without_weight_copies() -> None:
    """On CUDA each layer keeps its own cuDNN call (a grouped call would want one flat weight
    buffer and warn about copying); filterwarnings=error turns any such warning into a failure."""
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)]).cuda().eval()
    names = _ops(model, 32)
    assert sum(n == "aten::_cudnn_rnn" for n in names) == 2

"""The seed scenario: two LSTM layers of 8 and 16, batch 10, 96 steps, 2 -> 2, state set per minibatch."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import hiddenstate as hs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seed_keras_question.py"
SEED_MESSAGE = "layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (10, 2)"


def raises(exc: type[Exception], message: str) -> Any:
    """pytest.raises matching the whole message literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("seed_keras_question", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def example_run(example: ModuleType) -> tuple[Any, str]:
    """Run the example once for the whole module and keep what it printed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = example.main()
    return result, out.getvalue()


def seed_model() -> hs.SequenceModel:
    return hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)], state_encoder="cond:2")


# -- the example ---------------------------------------------------------------------------------


def test_example_trains_and_sets_states(example_run: tuple[Any, str]) -> None:
    result, printed = example_run
    assert result.state_size == ((8, 8), (16, 16))
    assert len(result.losses) == 36  # 6 epochs of 6 minibatches
    assert result.losses[0] > 0.3  # the series have unit-ish variance; an untrained model is far off
    assert result.losses[-1] < 0.1 * result.losses[0]
    assert sum(result.losses[-6:]) < sum(result.losses[:6]) / 5  # the last epoch beats the first
    # Setting the state from the previous true values pays off where it matters: the first steps.
    assert result.first_steps_mse_encoded < 0.75 * result.first_steps_mse_zeros
    # The encoder, explicit tensors and Stateful.set_state give the very same predictions.
    assert result.explicit_vs_encoder == 0.0
    assert result.stateful_vs_model == 0.0
    assert result.refused == SEED_MESSAGE

    lines = printed.strip().splitlines()
    assert len(lines) == 6
    assert lines[0] == "model: LSTM 8 -> LSTM 16 -> linear head, 2 -> 2; state_size ((8, 8), (16, 16))"
    assert lines[1].startswith("trained 36 minibatches of (batch=10, steps=96, 2)")
    assert lines[-1] == f"a (10, 2) h for the 8-unit layer is refused: {SEED_MESSAGE}"


def test_example_minibatch_layout(example: ModuleType) -> None:
    series = torch.as_tensor(example.seasonal_lanes(seed=0), dtype=torch.float32)
    assert tuple(series.shape) == (10, 6 * 96 + 2, 2)
    batches = example.minibatches(series)
    assert len(batches) == 6
    for k, (x, y, cond) in enumerate(batches):
        assert tuple(x.shape) == (10, 96, 2) and tuple(y.shape) == (10, 96, 2) and tuple(cond.shape) == (10, 2)
        assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the next step
        assert torch.equal(cond, series[:, k * 96])  # the true observation just before the chunk
        assert torch.equal(x[:, 0], series[:, 1 + k * 96])
        if k:
            assert torch.equal(cond, batches[k - 1][0][:, -1])  # chunks follow each other without a gap


# -- the scenario directly -----------------------------------------------------------------------


def test_state_set_before_every_minibatch_from_previous_values() -> None:
    model = seed_model()
    x = torch.randn(10, 96, 2)
    cond = torch.randn(10, 2)
    y1, s1 = model(x, cond=cond)
    # The same minibatch and cond give the same result whatever ran before: nothing is carried.
    model(torch.randn(10, 96, 2), cond=torch.randn(10, 2))
    y2, s2 = model(x, cond=cond)
    assert torch.equal(y1, y2) and s1.allclose(s2, rtol=0, atol=0)
    # The state, hence the first prediction, depends on the previous true values.
    y3, _ = model(x, cond=cond + 1.0)
    assert float((y3[:, 0] - y1[:, 0]).detach().abs().max()) > 1e-4
    assert s1.spec.state_size == ((8, 8), (16, 16)) and tuple(y1.shape) == (10, 96, 2)


def test_state_from_explicit_tensors() -> None:
    model = seed_model()
    spec = model.state_spec
    h0, c0 = torch.tanh(torch.randn(10, 8)), torch.randn(10, 8)
    h1, c1 = torch.tanh(torch.randn(10, 16)), torch.randn(10, 16)
    state = hs.State.from_tensors(spec, [(h0, c0), (h1, c1)])
    x = torch.randn(10, 96, 2)
    y, final = model(x, state)

    stateful = hs.Stateful(model, batch_size=10)
    stateful.set_state(layer=0, h=h0, c=c0)
    stateful.set_state(layer=1, h=h1, c=c1)
    assert stateful.state.allclose(state, rtol=0, atol=0)
    assert torch.equal(stateful(x), y)
    assert stateful.state.allclose(final, rtol=0, atol=0)
    # The next minibatch continues from where this one ended.
    x2 = torch.randn(10, 96, 2)
    assert torch.equal(stateful(x2), model(x2, final)[0])


def test_wrong_state_refused_everywhere() -> None:
    model = seed_model()
    spec = model.state_spec
    wrong_h = torch.zeros(10, 2)  # sized like the 2 input variables, not the 8 hidden units
    with raises(hs.StateError, SEED_MESSAGE):
        hs.State.from_tensors(spec, [(wrong_h, torch.zeros(10, 8)), (torch.zeros(10, 16), torch.zeros(10, 16))])
    with raises(hs.StateError, SEED_MESSAGE):
        hs.State.zeros(spec, 10).replace(0, h=wrong_h)
    with raises(hs.StateError, SEED_MESSAGE):
        hs.Stateful(model, batch_size=10).set_state(layer=0, h=wrong_h)
    with raises(hs.StateError, SEED_MESSAGE):
        hs.State.from_dict(spec, {**hs.State.zeros(spec, 10).to_dict(), "layers.0.h": wrong_h})
    with raises(hs.StateError, "layer 1 (lstm, hidden 16) `c`: expected shape (batch=10, hidden=16), got (10, 2)"):
        hs.State.zeros(spec, 10).replace(1, c=torch.zeros(10, 2))
    # A StateError is a ValueError, so code that catches ValueError keeps working.
    with pytest.raises(ValueError, match=re.escape(SEED_MESSAGE)):
        hs.State.zeros(spec, 10).replace(0, h=wrong_h)

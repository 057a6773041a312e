"""Forecasting: warm-up, rollout with feedback, the direct head, backtests and metrics, by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.forecast import (
    backtest,
    forecast,
    forecast_original,
    metrics,
    repeat_last,
    resolve_method,
    rollout,
    target_indices,
    warm,
)


def _model(n_in: int = 3, n_out: int = 2, horizon: int = 0, **kw: object) -> hs.SequenceModel:
    torch.manual_seed(0)
    return hs.SequenceModel(n_in, n_out, [hs.LSTM(8), hs.GRU(6)], horizon=horizon, **kw).eval()


def _manual_rollout(model: hs.SequenceModel, x: torch.Tensor, horizon: int, index: list[int]) -> torch.Tensor:
    """The obvious loop over whole histories: rerun everything known so far, append the prediction."""
    rows = x.clone()  # (batch, steps, n_in)
    out = []
    with torch.no_grad():
        for _ in range(horizon):
            y, _ = model(rows)
            nxt = rows[:, -1].clone()
            nxt[:, index] = y[:, -1]
            out.append(y[:, -1])
            rows = torch.cat([rows, nxt.unsqueeze(1)], dim=1)
    return torch.stack(out, dim=1)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    true = np.array([[0.0, 2.0], [1.0, 1.0]])
    # errors 1, 0, 2, 4: mse = 21/4, mae = 7/4
    m = metrics(pred, true)
    assert m == {"mse": 5.25, "mae": 1.75, "rmse": pytest.approx(np.sqrt(5.25))}
    assert all(type(v) is float for v in m.values())


def test_metrics_takes_torch_and_numpy_alike() -> None:
    pred = torch.tensor([0.5, -0.5], requires_grad=True)
    assert metrics(pred, np.zeros(2)) == {"mse": 0.25, "mae": 0.5, "rmse": 0.5}


def test_metrics_shape_mismatch_message() -> None:
    with pytest.raises(hs.ShapeError, match=r"^metrics: pred has shape \(2, 3\) but true has shape \(3, 2\)$"):
        metrics(np.zeros((2, 3)), np.zeros((3, 2)))


def test_repeat_last_baseline() -> None:
    y = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(repeat_last(y, [3, 1], 2), [[[2, 3], [2, 3]], [[6, 7], [6, 7]]])


# -- warm and rollout ---------------------------------------------------------------------------


def test_target_indices() -> None:
    assert target_indices(["a", "b", "c"], ["c", "a"]) == (2, 0)
    assert target_indices(["a"], ["b"]) is None


def test_warm_equals_one_forward_pass() -> None:
    m = _model()
    x = torch.randn(4, 30, 3)
    _, expected = m(x)
    assert warm(m, x).allclose(expected)
    # in two pieces, carried: the same state
    assert warm(m, x[:, 12:], warm(m, x[:, :12])).allclose(expected, atol=1e-6)
    assert not warm(m, x).layers[0].h.requires_grad


def test_rollout_feeds_targets_back_and_holds_other_inputs() -> None:
    m = _model(n_in=3, n_out=2)
    x = torch.randn(2, 20, 3)
    state = warm(m, x[:, :-1])
    got = rollout(m, state, x[:, -1], 5, target_index=[2, 0])
    np.testing.assert_allclose(got.numpy(), _manual_rollout(m, x, 5, [2, 0]).numpy(), atol=1e-5)
    # the first step is the ordinary next-step prediction of the last row
    y, _ = m(x)
    np.testing.assert_allclose(got[:, 0].numpy(), y[:, -1].detach().numpy(), atol=1e-6)


def test_rollout_needs_targets_among_inputs() -> None:
    m = _model(n_in=3, n_out=2)
    with pytest.raises(
        hs.ConfigError,
        match=r"rollout feeds predictions back as inputs, but the model has 2 targets and 3 inputs and no target "
        r"columns were given; pass target_index or use method='direct'",
    ):
        rollout(m, hs.State.zeros(m.state_spec, 1), torch.zeros(1, 3), 4)
    with pytest.raises(hs.ConfigError, match=r"^horizon must be at least 1, got 0$"):
        rollout(m, hs.State.zeros(m.state_spec, 1), torch.zeros(1, 3), 0, target_index=[0, 1])


def test_rollout_with_state_encoder_uses_first_row_as_cond() -> None:
    m = _model(n_in=2, n_out=2, state_encoder="cond:2")
    x = torch.randn(3, 15, 2)
    y, _ = m(x[:, 1:], cond=x[:, 0])
    got = forecast(m, x, 3, "rollout")
    np.testing.assert_allclose(got[:, 0].numpy(), y[:, -1].detach().numpy(), atol=1e-6)


# -- forecast: methods ---------------------------------------------------------------------------


def test_direct_uses_head_on_state_after_whole_history() -> None:
    m = _model(n_in=2, n_out=2, horizon=6)
    x = torch.randn(3, 25, 2)
    _, state = m(x)
    expected = m.forecast_direct(state)[:, :4].detach()
    np.testing.assert_allclose(forecast(m, x, 4, "direct").numpy(), expected.numpy(), atol=1e-6)
    assert resolve_method(m, "auto", 6, None) == "direct"
    assert resolve_method(m, "auto", 7, None) == "rollout"  # longer than the head: roll out


def test_rollout_and_direct_differ_and_both_have_the_right_shape() -> None:
    m = _model(n_in=2, n_out=2, horizon=5)
    x = torch.randn(2, 10, 2)
    r, d = forecast(m, x, 5, "rollout"), forecast(m, x, 5, "direct")
    assert r.shape == d.shape == (2, 5, 2)
    assert not torch.allclose(r, d)


def test_an_empty_target_index_means_no_rollout_even_when_sizes_match() -> None:
    m = _model(n_in=1, n_out=1, horizon=3)
    assert resolve_method(m, "auto", 3, ()) == "direct"
    with pytest.raises(hs.ConfigError, match=r"^rollout needs every target among the inputs"):
        forecast(m, torch.zeros(1, 4, 1), 3, "rollout", target_index=())


def test_method_errors() -> None:
    m = _model(n_in=3, n_out=2)
    with pytest.raises(
        hs.ConfigError, match=r"^unknown forecast method 'beam'; expected one of auto, rollout, direct$"
    ):
        forecast(m, torch.zeros(1, 4, 3), 2, "beam")
    with pytest.raises(
        hs.ConfigError, match=r"^method 'direct' needs a model with a direct head; train it with --horizon H$"
    ):
        forecast(m, torch.zeros(1, 4, 3), 2, "direct")
    with pytest.raises(hs.ConfigError, match=r"^rollout needs every target among the inputs, to feed predictions"):
        forecast(m, torch.zeros(1, 4, 3), 2, "rollout")
    with pytest.raises(
        hs.ConfigError,
        match=r"^cannot forecast 2 steps: a target is not an input \(so no rollout\) and the model's direct head "
        r"covers 0 steps; train with --horizon 2$",
    ):
        forecast(m, torch.zeros(1, 4, 3), 2)
    m5 = _model(n_in=2, n_out=2, horizon=5)
    with pytest.raises(hs.ConfigError, match=r"^the direct head forecasts 5 steps, but horizon 9 was asked$"):
        forecast(m5, torch.zeros(1, 4, 2), 9, "direct")
    with pytest.raises(hs.ShapeError, match=r"^history: expected shape \(batch, steps, n_in=2\), got \(1, 4, 3\)$"):
        forecast(m5, torch.zeros(1, 4, 3), 2)


def test_model_with_its_own_forecast_is_used() -> None:
    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forecast(self, history: torch.Tensor, horizon: int) -> torch.Tensor:
            return history[:, -1:, :1].repeat(1, horizon, 1) * self.w + 1

    got = forecast(Own(), torch.full((2, 3, 1), 4.0), 3, "rollout")
    np.testing.assert_array_equal(got.detach().numpy(), np.full((2, 3, 1), 5.0))


def test_forecast_original_scales_in_and_out() -> None:
    class Scaler:  # the StandardScaler interface, over the input columns
        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            self.mean, self.std = mean, std

        def transform(self, a: np.ndarray) -> np.ndarray:
            return (a - self.mean) / self.std

        def inverse_transform(self, a: np.ndarray) -> np.ndarray:
            return a * self.std + self.mean

        def select(self, idx: list[int]) -> Scaler:
            return Scaler(self.mean[idx], self.std[idx])

    class RunStub:
        model = _model(n_in=3, n_out=1)
        scaler = Scaler(np.array([10.0, 20.0, 30.0]), np.array([2.0, 4.0, 8.0]))
        inputs = ("a", "b", "c")
        targets = ("c",)

    history = np.random.default_rng(0).normal(20, 5, size=(12, 3))
    got = forecast_original(RunStub(), history, 4, "rollout")
    norm = forecast(RunStub.model, torch.tensor(RunStub.scaler.transform(history)[None]).float(), 4, target_index=[2])
    assert got.shape == (1, 4, 1)
    np.testing.assert_allclose(got, norm.double().numpy() * 8.0 + 30.0, rtol=1e-6)


# -- backtest ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rollout", "direct"])
def test_backtest_equals_forecast_from_each_prefix(method: str) -> None:
    m = _model(n_in=2, n_out=2, horizon=4)
    series = np.random.default_rng(1).normal(size=(60, 2))
    pred, true = backtest(m, series, series, 4, [40, 12, 25], method)
    for k, o in enumerate([12, 25, 40]):  # sorted
        single = forecast(m, torch.tensor(series[None, : o + 1]).float(), 4, method)
        np.testing.assert_allclose(pred[k], single[0].double().numpy(), atol=1e-5)
        np.testing.assert_array_equal(true[k], series[o + 1 : o + 5])


def test_backtest_origin_range_message() -> None:
    m = _model(n_in=2, n_out=2)
    with pytest.raises(
        hs.ConfigError, match=r"^backtest: origins must lie in \[0, 15\] for 20 steps and horizon 4, got 3\.\.16$"
    ):
        backtest(m, np.zeros((20, 2)), np.zeros((20, 2)), 4, [3, 16])


def test_a_model_that_learned_a_sine_beats_repeat_last() -> None:
    """Rollout from a fitted model beats the naive baseline over a whole period."""
    torch.manual_seed(0)
    t = np.arange(600)
    series = np.sin(2 * np.pi * t / 24)[:, None]
    m = hs.SequenceModel(1, 1, [hs.LSTM(16)])
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    x = torch.tensor(series[None, :-1]).float()
    y = torch.tensor(series[None, 1:]).float()
    for _ in range(150):
        opt.zero_grad()
        loss = ((m(x[:, :400])[0] - y[:, :400]) ** 2).mean()
        loss.backward()
        opt.step()
    origins = range(450, 570, 7)
    pred, true = backtest(m.eval(), series, series, 24, origins, "rollout")
    model_mse = metrics(pred, true)["mse"]
    naive_mse = metrics(repeat_last(series, origins, 24), true)["mse"]
    assert model_mse < 0.1 * naive_mse

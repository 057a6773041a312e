"""Likelihood heads: each family trains on data with known noise and recovers its scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate._kernels.fused import fused_available
from hiddenstate.data.lanes import StatefulBatches
from hiddenstate.data.scaled import ScaledBatches
from hiddenstate.errors import ConfigError
from hiddenstate.likelihood import LIKELIHOODS, get_likelihood, mean_scale, resolve_likelihood

PERIOD = 24
LEVELS = (5.0, 20.0, 80.0)  # three series of very different size: the mean scale makes them one problem


def _phase(n: int) -> np.ndarray:
    t = np.arange(n)
    return np.stack([np.sin(2 * np.pi * t / PERIOD), np.cos(2 * np.pi * t / PERIOD)], axis=1)


def _series(family: str, n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per series: the observed values ``(n, 1)`` and their true per-step standard deviation."""
    rng = np.random.default_rng(seed)
    ys, sds = [], []
    for level in LEVELS:
        mu = level * (1.0 + 0.3 * _phase(n)[:, :1])  # (n, 1)
        if family == "normal":  # sd 10% of the level
            sd = np.full_like(mu, 0.1 * level)
            y = mu + sd * rng.standard_normal(mu.shape)
        elif family == "studentt":  # df 5, scale 10% of the level: sd = scale * sqrt(5/3)
            sd = np.full_like(mu, 0.1 * level * np.sqrt(5 / 3))
            y = mu + 0.1 * level * rng.standard_t(5, mu.shape)
        else:  # negbin, total_count 4: var = mu + mu^2 / 4
            r = 4.0
            y = rng.negative_binomial(r, r / (r + mu)).astype(np.float64)
            sd = np.sqrt(mu + mu**2 / r)
        ys.append(y)
        sds.append(sd)
    return ys, sds


def _train(family: str, n: int = 1200, epochs: int = 40) -> tuple[hs.SequenceModel, np.ndarray, np.ndarray]:
    ys, sds = _series(family, n, seed=1)
    scales = np.stack([mean_scale(y) for y in ys])  # (series, 1)
    inputs = [np.hstack([y / s, _phase(n)]) for y, s in zip(ys, scales, strict=True)]
    torch.manual_seed(0)
    model = hs.SequenceModel(3, 1, [hs.LSTM(16)], likelihood=family)
    batches = ScaledBatches(StatefulBatches(inputs, ys, batch_size=3, steps=100), scales)
    cfg = hs.TrainConfig(epochs=epochs, lr=1e-2, seed=0, progress=False, device="cpu")
    hs.Trainer(model, cfg).fit(batches)
    # the predictive sd over the last rows of each series, in the series' own units
    model.eval()
    with torch.no_grad():
        x = torch.as_tensor(np.stack(inputs), dtype=torch.float32)  # (series, n, 3)
        raw, _ = model(x)
        dist = model.distribution(raw, torch.as_tensor(scales, dtype=torch.float32).unsqueeze(1))
    # raw[:, t] is the distribution of row t+1
    return model, dist.stddev[:, -600:-1, 0].numpy(), np.stack(sds)[:, -599:, 0]


@pytest.mark.parametrize("family", LIKELIHOODS)
def test_each_likelihood_recovers_the_noise_scale_within_10_percent(family: str) -> None:
    _, predicted, true = _train(family)
    for i, level in enumerate(LEVELS):
        ratio = float(np.mean(predicted[i]) / np.mean(true[i]))
        assert abs(ratio - 1) < 0.10, f"{family} series {i} (level {level}): predicted/true sd = {ratio:.3f}"


def test_default_likelihood_is_student_t_and_is_saved_in_the_config() -> None:
    assert resolve_likelihood(True) == resolve_likelihood("default") == "studentt"
    m = hs.SequenceModel(2, 2, [hs.LSTM(4)], likelihood=True)
    assert m.config()["likelihood"] == "studentt"
    assert m.head.out_features == 3 * 2  # loc, scale, df per output
    again = hs.build_model(m.config())
    assert again.likelihood_name == "studentt" and again.head.out_features == 6
    assert "likelihood" not in hs.SequenceModel(2, 2, [hs.LSTM(4)]).config()


def test_bad_likelihood_arguments_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown likelihood 'gamma'; expected None, True, 'default' or one of"):
        hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="gamma")
    with pytest.raises(ConfigError, match=r"head_activation 'tanh': a likelihood head outputs raw parameters"):
        hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal", head_activation="tanh")
    with pytest.raises(ConfigError, match="point outputs"):
        hs.SequenceModel(1, 1, [hs.LSTM(4)]).distribution(torch.zeros(1, 1, 1))
    with pytest.raises(ConfigError, match="negative values"):
        get_likelihood("negbin").nll(torch.zeros(1, 2), torch.tensor([-1.0]))


def test_scale_is_folded_into_each_distribution() -> None:
    raw = torch.randn(4, 3, 6)
    s = torch.full((4, 1, 2), 7.0)
    for name in ("studentt", "normal"):
        lik = get_likelihood(name)
        a, b = lik.distribution(raw[..., : 2 * lik.n_params]), lik.distribution(raw[..., : 2 * lik.n_params], s)
        torch.testing.assert_close(b.mean, a.mean * 7.0)
        torch.testing.assert_close(b.stddev, a.stddev * 7.0)
    nb = get_likelihood("negbin")
    a, b = nb.distribution(raw[..., :4]), nb.distribution(raw[..., :4], s)
    torch.testing.assert_close(b.mean, a.mean * 7.0)
    torch.testing.assert_close(b.total_count, a.total_count)  # still counts: only the mean moves


def test_mean_scale_matches_deepar_and_fills_silent_series() -> None:
    v = np.array([[2.0, 0.0, 1.0], [-4.0, 0.0, 3.0]])
    assert mean_scale(v).tolist() == [3.0, 2.5, 2.0]  # the silent column takes the others' mean
    assert mean_scale(np.zeros((3, 1))).tolist() == [1.0]


def test_trainer_evaluate_reports_nll_and_the_mean_error() -> None:
    ys, _ = _series("normal", 200, seed=2)
    scales = np.stack([mean_scale(y) for y in ys])
    inputs = [y / s for y, s in zip(ys, scales, strict=True)]
    model = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal")
    batches = ScaledBatches(StatefulBatches(inputs, ys, batch_size=3, steps=50), scales)
    trainer = hs.Trainer(model, hs.TrainConfig(epochs=1, progress=False, device="cpu"))
    out = trainer.evaluate(batches)
    # by hand: the NLL of every valid target under the model's distributions, and the mean's MSE
    nll_sum, se_sum, count, state = 0.0, 0.0, 0, None
    with torch.no_grad():
        for b in batches:  # the state carried from chunk to chunk, as the Trainer does
            raw, state = model(b.x, state, reset=b.reset if state is not None else None)
            d = model.distribution(raw, b.scale.unsqueeze(1))
            m = b.mask.unsqueeze(-1)
            nll_sum += float((-d.log_prob(b.y))[m].sum())
            se_sum += float(((d.mean - b.y) ** 2)[m].sum())
            count += int(m.sum())
    assert out["loss"] == pytest.approx(nll_sum / count, rel=1e-5)
    assert out["mse"] == pytest.approx(se_sum / count, rel=1e-5)


def test_cli_train_with_likelihood_saves_a_likelihood_run(tmp_path) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli import app

    out = tmp_path / "run"
    args = ["train", "--out", out, "--epochs", "1", "--hidden", "8", "--likelihood", "studentt"]
    args += ["--synthetic-steps", "600", "--horizon", "4", "--no-plots"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    run = hs.load_run(out)
    assert run.model.likelihood_name == "studentt" and run.model.head.out_features == 3 * run.model.output_size


@pytest.mark.parametrize("family", ["normal", "negbin"])
def test_each_family_draws_what_its_torch_distribution_draws(family: str) -> None:
    """The sampling loop's draw (no distribution object, a seeded generator) is bit for bit the
    draw of ``torch.distributions`` from the global generator seeded the same way."""
    lik = get_likelihood(family)
    g = torch.Generator().manual_seed(11)
    raw, scale = torch.randn(400, 3 * lik.n_params, generator=g), torch.rand(400, 3, generator=g) + 0.5
    torch.manual_seed(7)
    expected = lik.distribution(raw, scale).sample()
    assert torch.equal(lik.sample(raw, scale, 1.0, torch.Generator().manual_seed(7)), expected)
    torch.manual_seed(7)
    assert torch.equal(lik.sample(raw, scale), expected)  # no generator: the global one


def test_student_t_draws_follow_the_torch_distributions_law() -> None:
    """Student-t draws its chi-square before its normal (so not torch's random numbers), from the
    same law: 10^6 draws have the quantiles of 10^6 draws of ``D.StudentT``."""
    lik = get_likelihood("studentt")
    raw = torch.tensor([[0.5, 1.0, 0.3]]).expand(1_000_000, 3)  # loc 0.5, scale softplus(1), df 2 + softplus(0.3)
    ours = lik.sample(raw, None, 1.0, torch.Generator().manual_seed(1))[:, 0]
    torch.manual_seed(2)
    theirs = lik.distribution(raw).sample()[:, 0]
    q = torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    torch.testing.assert_close(torch.quantile(ours, q), torch.quantile(theirs, q), atol=0.02, rtol=0.02)
    # a sampler that forgot the chi-square (a normal of the same scale) misses the tails
    wrong = 0.5 + float(torch.nn.functional.softplus(torch.tensor(1.0))) * torch.randn(1_000_000)
    assert float((torch.quantile(wrong, q) - torch.quantile(theirs, q)).abs().max()) > 0.3


def _ops_draw(lik: Any, raw: torch.Tensor, scale: Any, spread: float, generator: Any) -> torch.Tensor:
    """The Student-t draw through torch's elementwise ops (``_offset``), as without the kernel."""
    loc, z = lik._offset(raw, scale, generator)
    return (z * spread if spread != 1.0 else z) + loc


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("with_scale", "spread"), [(True, 1.0), (True, 1.7), (False, 0.6)])
def test_the_kernels_student_t_draw_is_the_torch_ops_draw(dtype, with_scale, spread) -> None:
    """On the CPU the Student-t draw runs its arithmetic in two passes of the C kernel around
    torch's softplus, gamma and normal draws: from the same generator, the very draws of
    torch's ops (``_offset``), bit for bit, with and without a scale, at any
    spread; raw values past softplus's threshold (20) included."""
    from hiddenstate._kernels.fused import studentt_draw

    lik = get_likelihood("studentt")
    g = torch.Generator().manual_seed(3)
    raw = (torch.randn(500, 6, generator=g, dtype=dtype) * 8).clamp(-30, 30)  # 2 outputs x (loc, scale, df)
    scale = torch.rand(500, 2, generator=g, dtype=dtype) + 0.5 if with_scale else None
    assert studentt_draw(raw, scale, spread, 1e-6, torch.Generator().manual_seed(0)) is not None  # the kernel's path
    ours = lik.sample(raw, scale, spread, torch.Generator().manual_seed(9))
    ops = _ops_draw(lik, raw, scale, spread, torch.Generator().manual_seed(9))
    assert torch.equal(ours, ops)  # the same operations in the same order, on the same random numbers
    assert ours.dtype == dtype and ours.shape == (500, 2)


def test_the_student_t_draw_takes_torchs_ops_where_the_kernel_cannot() -> None:
    """A scale whose rows are not back to back, a 3-d raw or a raw that needs its gradient go
    through torch's ops: the very draws of ``_offset``."""
    from hiddenstate._kernels.fused import studentt_draw

    lik = get_likelihood("studentt")
    raw = torch.randn(40, 3)
    wide = (torch.rand(40, 2) + 0.5)[:, :1]  # (40, 1), rows 2 apart
    assert studentt_draw(raw, wide, 1.0, 1e-6, None) is None
    want = _ops_draw(lik, raw, wide, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(lik.sample(raw, wide, 1.0, torch.Generator().manual_seed(4)), want)
    assert studentt_draw(raw[None], None, 1.0, 1e-6, None) is None
    grad = raw.clone().requires_grad_()
    want = _ops_draw(lik, grad, None, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(lik.sample(grad, None, 1.0, torch.Generator().manual_seed(4)), want)

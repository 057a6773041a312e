"""Sample paths are ancestral: each path feeds its own draws back through its own state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate._kernels.fused import fused_available
from hiddenstate.data.lanes import StatefulBatches
from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.forecast import warm
from hiddenstate.paths import path_quantiles, sample_paths

PHI, SIGMA = 0.8, 1.0


@pytest.fixture(scope="module")
def ar1_model() -> tuple[hs.SequenceModel, np.ndarray]:
    """A normal-likelihood LSTM trained on an AR(1) process y[t] = 0.8 y[t-1] + N(0, 1)."""
    rng = np.random.default_rng(0)
    series = []
    for _ in range(4):
        y = np.zeros(1500)
        for t in range(1, len(y)):
            y[t] = PHI * y[t - 1] + SIGMA * rng.standard_normal()
        series.append(y[:, None])
    torch.manual_seed(0)
    model = hs.SequenceModel(1, 1, [hs.LSTM(8)], likelihood="normal")
    cfg = hs.TrainConfig(epochs=20, lr=1e-2, progress=False, device="cpu")
    hs.Trainer(model, cfg).fit(StatefulBatches(series, series, batch_size=4, steps=100))
    return model.eval(), series[0]


def test_consecutive_steps_of_paths_correlate_as_the_process_does(ar1_model) -> None:
    model, y = ar1_model
    state = warm(model, torch.as_tensor(y[None, :-1], dtype=torch.float32))
    last = torch.tensor([[y[-1, 0]]], dtype=torch.float32)
    paths = sample_paths(model, state, last, horizon=3, num_samples=4000, seed=0)[:, 0, :, 0]  # (samples, 3)
    # Given y[T]: z1 = phi y[T] + e1, z2 = phi z1 + e2, so corr(z1, z2) = phi / sqrt(1 + phi^2) = 0.625.
    want = PHI / np.sqrt(1 + PHI**2)
    got = np.corrcoef(paths[:, 0].numpy(), paths[:, 1].numpy())[0, 1]
    assert abs(got - want) < 0.06, f"corr(step 1, step 2) = {got:.3f}, the AR(1) process has {want:.3f}"
    # and the spread grows as the process says: var(z2) = sigma^2 (1 + phi^2)
    assert float(paths[:, 1].var()) == pytest.approx(SIGMA**2 * (1 + PHI**2), rel=0.12)
    # Marginals around the mean path (the mean fed back, each step drawn on its own) miss it:
    with torch.no_grad():
        raw1, s1 = model(last.unsqueeze(1), state)
        mean1 = model.distribution(raw1).mean[:, 0]  # (1, 1)
        raw2, _ = model(mean1.unsqueeze(1), s1)
        g = torch.Generator().manual_seed(0)
        d1, d2 = model.distribution(raw1[:, 0]), model.distribution(raw2[:, 0])
        m1 = d1.mean + d1.stddev * torch.randn(4000, 1, generator=g)
        m2 = d2.mean + d2.stddev * torch.randn(4000, 1, generator=g)
    marginal = np.corrcoef(m1[:, 0].numpy(), m2[:, 0].numpy())[0, 1]
    assert abs(marginal) < 0.06 < abs(got - marginal) - 0.4


def test_a_seed_gives_bitwise_equal_paths_and_leaves_the_global_generator_alone(ar1_model) -> None:
    model, y = ar1_model
    state = warm(model, torch.as_tensor(np.stack([y[:-1], y[:-1] * 0.5]), dtype=torch.float32))
    last = torch.tensor([[y[-1, 0]], [0.0]])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = sample_paths(model, state, last, 12, num_samples=50, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = sample_paths(model, state, last, 12, num_samples=50, seed=7)
    c = sample_paths(model, state, last, 12, num_samples=50, seed=8)
    assert a.shape == (50, 2, 12, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_paths_start_from_the_state_without_re_reading_history(ar1_model) -> None:
    """Each row's paths are the row's own: the same as sampling that row alone, path by path."""
    model, y = ar1_model
    xs = torch.as_tensor(np.stack([y[:-1], -y[:-1]]), dtype=torch.float32)
    state = warm(model, xs)
    last = torch.tensor([[1.0], [-1.0]])
    both = sample_paths(model, state, last, 4, num_samples=3, seed=0)
    calls = []
    # the head's input: (rows, hidden) for one step, or (rows, steps, hidden)
    handle = model.head.register_forward_hook(
        lambda m, i, o: calls.append((i[0].shape[0], 1 if i[0].dim() == 2 else i[0].shape[1]))
    )
    try:
        sample_paths(model, state, last, 4, num_samples=3, seed=0)
    finally:
        handle.remove()
    # horizon steps, one step each: the first once per row (every path of a row starts alike),
    # the others over samples x rows
    assert calls == [(2, 1)] + [(6, 1)] * 3
    # path s of row b is the sample-major row s * batch + b: its first step's mean is row b's
    with torch.no_grad():
        raw, _ = model(last.unsqueeze(1), state)
    mean_first = model.distribution(raw[:, 0]).mean  # (2, 1)
    assert float((both[:, 0, 0, 0] - mean_first[0, 0]).abs().max()) < 5
    assert float(both[:, 0, 0, 0].mean()) > float(both[:, 1, 0, 0].mean())  # row 0 starts at +1, row 1 at -1


def test_quantiles_and_means_from_paths() -> None:
    paths = torch.arange(101.0).view(101, 1, 1, 1)  # (samples, batch, horizon, out)
    q = path_quantiles(paths, [0.1, 0.5, 0.9])
    assert q.shape == (3, 1, 1, 1) and q[:, 0, 0, 0].tolist() == [10.0, 50.0, 90.0]
    with pytest.raises(ConfigError, match=r"quantiles must be numbers in \(0, 1\), got \[0.5, 1.5\]"):
        path_quantiles(paths, [0.5, 1.5])


def test_bad_arguments() -> None:
    point = hs.SequenceModel(1, 1, [hs.LSTM(4)])
    lik = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal")
    state = hs.State.zeros(lik.state_spec, 2)
    with pytest.raises(ConfigError, match="needs a model with a likelihood head"):
        sample_paths(point, state, torch.zeros(2, 1), 3)
    with pytest.raises(ShapeError, match=r"last: expected shape \(batch=2, n_in=1\), got \(3, 1\)"):
        sample_paths(lik, state, torch.zeros(3, 1), 3)
    with pytest.raises(ShapeError, match=r"scale: expected shape \(batch=2, n_out=1\), got \(2,\)"):
        sample_paths(lik, state, torch.zeros(2, 1), 3, scale=torch.ones(2))
    with pytest.raises(ConfigError, match="num_samples must be an int >= 1, got 0"):
        sample_paths(lik, state, torch.zeros(2, 1), 3, num_samples=0)


def test_scale_multiplies_draws_and_divides_feedback() -> None:
    torch.manual_seed(0)
    m = hs.SequenceModel(1, 1, [hs.LSTM(4)], likelihood="normal").eval()
    state = hs.State.zeros(m.state_spec, 1)
    unit = sample_paths(m, state, torch.ones(1, 1), 5, 20, seed=3)
    scaled = sample_paths(m, state, torch.ones(1, 1), 5, 20, seed=3, scale=torch.full((1, 1), 100.0))
    torch.testing.assert_close(scaled, unit * 100.0)  # the same paths in the series' units


def test_run_forecast_gives_quantiles_from_paths(tmp_path, ar1_model) -> None:
    from hiddenstate.data.scaling import StandardScaler
    from hiddenstate.paths import sample_paths_original

    model, y = ar1_model
    scaler = StandardScaler.fit([y * 10 + 50], columns=["y"])  # original units: 10 y + 50
    hs.save_run(tmp_path / "run", model, scaler=scaler, inputs=["y"], targets=["y"])
    run = hs.load_run(tmp_path / "run")
    history = y[-200:] * 10 + 50
    q = run.forecast(history, 6, quantiles=[0.1, 0.5, 0.9], num_samples=400, seed=1)
    assert q.shape == (3, 1, 6, 1)
    assert (q[0] < q[1]).all() and (q[1] < q[2]).all()
    paths = sample_paths_original(run, history, 6, 400, seed=1)  # (400, 1, 6, 1), original units
    np.testing.assert_allclose(q, np.quantile(paths, [0.1, 0.5, 0.9], axis=0))
    # the paths are the model's normalised paths mapped back through the scaler
    x = torch.as_tensor(scaler.transform(history[None]), dtype=torch.float32)
    raw = sample_paths(run.model, warm(run.model, x[:, :-1]), x[:, -1], 6, 400, seed=1)
    np.testing.assert_allclose(paths, scaler.inverse_transform(raw.double().numpy()), rtol=1e-6)
    with pytest.raises(ConfigError, match="likelihood head"):
        point = hs.SequenceModel(1, 1, [hs.LSTM(4)])
        hs.save_run(tmp_path / "point", point, scaler=scaler, inputs=["y"], targets=["y"])
        hs.load_run(tmp_path / "point").forecast(history, 6, quantiles=[0.5])


def _spy_inputs(model: hs.SequenceModel) -> tuple[list[torch.Tensor], object]:
    """Record the input of every recurrent step (a hook on the first cell; it also sends the
    steps through the model's own forward)."""
    seen: list[torch.Tensor] = []
    handle = model.rnn.cells[0].register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 0].clone()))
    return seen, handle


def test_a_lag_column_reads_the_history_then_each_paths_own_draw_lag_steps_back() -> None:
    torch.manual_seed(0)
    model = hs.SequenceModel(3, 1, [hs.LSTM(6)], likelihood="studentt").eval()
    batch, horizon, ns = 2, 7, 5
    state = hs.State.zeros(model.state_spec, batch)
    last = torch.randn(batch, 3)
    ahead = torch.randn(batch, horizon - 1, 3)
    scale = torch.tensor([[2.0], [0.5]])
    seen, handle = _spy_inputs(model)
    try:
        paths = sample_paths(
            model, state, last, horizon, ns, seed=3, scale=scale, target_index=[0], ahead=ahead,
            lagged=[(1, 0, 2), (2, 0, 4)],
        )  # fmt: skip
    finally:
        handle.remove()
    assert len(seen) == horizon
    rows = torch.arange(batch).repeat(ns)
    s = scale[rows]  # (ns * batch, 1)
    draws = paths.reshape(ns * batch, horizon)  # row s * batch + b, step k
    given = torch.cat([last[:, None], ahead], dim=1)[rows]  # (ns * batch, horizon, 3): the history's values
    torch.testing.assert_close(seen[0], last)  # the first step runs once per row: its paths all start at `last`
    for k, x in enumerate(seen[1:], start=1):
        torch.testing.assert_close(x[:, 0], draws[:, k - 1] / s[:, 0])
        for col, lag in ((1, 2), (2, 4)):
            want = draws[:, k - lag] / s[:, 0] if k >= lag else given[:, k, col]
            torch.testing.assert_close(x[:, col], want, msg=f"step {k}, lag {lag}")


_BRANCHES = {  # name: (paths per row, whether the product + kernel step may run)
    "cell-functions": (3, False),  # 6 rows
    "gemm-few-rows": (3, True),  # 6 rows, LSTM layers only; the others take the cell functions
    "gemm-pointwise": (20, True),  # 40 rows
    "rnn-kernel": (200, False),  # 400 rows
}


@pytest.mark.parametrize("cells", [[hs.LSTM(6), hs.LSTM(6)], [hs.GRU(5), hs.LSTM(7)], [hs.RNN(4)]])
@pytest.mark.parametrize("branch", list(_BRANCHES))
def test_the_lean_step_loop_samples_what_the_models_forward_does(cells, branch, monkeypatch) -> None:
    """An all-LSTM stack takes one matrix product and one pass of the C kernel per layer, at any
    number of rows; other stacks (or without the kernel) call the cell functions up to 256 rows
    and the RNN kernel above. Every branch gives the paths the model's own one-step forward
    gives (a hook forces that path), to float rounding."""
    from hiddenstate import paths

    ns, gemm = _BRANCHES[branch]
    if not gemm:
        monkeypatch.setattr(paths, "_pointwise_ok", lambda *a: False)
    elif not fused_available():
        pytest.skip("no C compiler for the kernel")
    torch.manual_seed(1)
    model = hs.SequenceModel(3, 1, cells, likelihood="normal").eval()
    state = warm(model, torch.randn(2, 30, 3))
    last, ahead = torch.randn(2, 3), torch.randn(2, 5, 3)
    all_lstm = all(ls.cell == "lstm" for ls in model.state_spec.layers)
    want = {"cell-functions": "cell_step", "rnn-kernel": "kernel_step"}.get(
        branch, "gemm_step" if all_lstm else "cell_step"
    )
    assert paths._stepper(model, state.select(torch.arange(2).repeat(ns))).__name__ == want
    # column 1 holds the output's lag 2: the history's value, then from the third step each path's own
    opts = {"target_index": [0], "ahead": ahead, "lagged": [(1, 0, 2)]}
    lean = sample_paths(model, state, last, 6, ns, seed=9, **opts)
    _, handle = _spy_inputs(model)
    try:
        general = sample_paths(model, state, last, 6, ns, seed=9, **opts)
    finally:
        handle.remove()
    torch.testing.assert_close(lean, general, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
def test_the_onednn_products_sample_what_the_models_forward_does(monkeypatch) -> None:
    """Large products go through oneDNN's matmul (where this torch has it); with the threshold
    at 0, the small test model's do too, and its paths are the model's own forward's."""
    from hiddenstate import paths

    if not paths._onednn_ready():
        pytest.skip("this torch build has no oneDNN fused linear")
    w, b = torch.zeros(160, 80), torch.zeros(160)
    assert paths._product(700, w, b).__name__ == "onednn"  # 700 x 80 x 160: the sampling loop's shape
    assert paths._product(16, w, b).__name__ == "blas"  # a small product: oneDNN's setup would cost more
    assert paths._product(700, w.double(), b.double()).__name__ == "blas"  # oneDNN's linear is float32 here
    monkeypatch.setattr(paths, "_ONEDNN_WORK", 0)
    torch.manual_seed(3)
    model = hs.SequenceModel(3, 1, [hs.LSTM(6), hs.LSTM(5)], likelihood="studentt").eval()
    state = warm(model, torch.randn(2, 30, 3))
    last, ahead = torch.randn(2, 3), torch.randn(2, 6, 3)
    opts = {"target_index": [0], "ahead": ahead, "lagged": [(2, 0, 3)], "scale": torch.tensor([[2.0], [0.5]])}
    lean = sample_paths(model, state, last, 7, 20, seed=5, **opts)
    _, handle = _spy_inputs(model)
    try:
        general = sample_paths(model, state, last, 7, 20, seed=5, **opts)
    finally:
        handle.remove()
    torch.testing.assert_close(lean, general, rtol=1e-4, atol=1e-5)


def test_without_onednn_the_products_are_the_blas(monkeypatch) -> None:
    """A build without oneDNN, or whose fused linear raises or computes something else than the
    BLAS, runs every product on the BLAS; the check is made once per process."""
    from hiddenstate import paths

    def fails(*args: object) -> None:
        raise RuntimeError("no such kernel")

    def wrong(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *rest: object) -> torch.Tensor:
        return torch.addmm(b, x, w.T) + 1e-3  # off by more than float rounding

    try:
        for name, value in (("_linear_pointwise", fails), ("_linear_pointwise", wrong)):
            with monkeypatch.context() as m:
                m.setattr(torch.ops.mkldnn, name, value)
                paths._onednn_ready.cache_clear()
                assert not paths._onednn_ready()
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        paths._onednn_ready.cache_clear()
        assert not paths._onednn_ready()
        assert paths._product(700, torch.zeros(160, 80), torch.zeros(160)).__name__ == "blas"
    finally:
        monkeypatch.undo()
        paths._onednn_ready.cache_clear()


def test_a_plain_head_is_its_one_product_and_any_other_the_models_own() -> None:
    """The lean loop's head: for a plain linear head, one ``addmm`` equal to ``apply_head``; a
    head with Dense layers, or with a hook on it, goes through ``apply_head`` itself."""
    from hiddenstate import paths

    torch.manual_seed(4)
    h = torch.randn(9, 6)
    plain = hs.SequenceModel(2, 1, [hs.LSTM(6)], likelihood="studentt").eval()
    head = paths._head_of(plain)
    assert head.__name__ == "linear"
    torch.testing.assert_close(head(h), plain.apply_head(h), rtol=1e-6, atol=1e-6)
    dense = hs.SequenceModel(2, 1, [hs.LSTM(6)], dense=[(4, "relu")]).eval()
    assert paths._head_of(dense) == dense.apply_head
    plain.head.register_forward_hook(lambda m, i, o: None)
    assert paths._head_of(plain) == plain.apply_head


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_pointwise_is_the_lstm_cell_after_its_products(dtype) -> None:
    """The kernel's activations and cell update, fed the products, give ``torch.lstm_cell``'s
    h and c, with h written into a column slice of a wider buffer and nothing else touched."""
    from hiddenstate._kernels.fused import lstm_pointwise

    torch.manual_seed(0)
    rows, n_in, hidden = 37, 5, 11
    w_ih, w_hh = torch.randn(4 * hidden, n_in, dtype=dtype), torch.randn(4 * hidden, hidden, dtype=dtype)
    b_ih, b_hh = torch.randn(4 * hidden, dtype=dtype), torch.randn(4 * hidden, dtype=dtype)
    x, h, c = (torch.randn(rows, n, dtype=dtype) for n in (n_in, hidden, hidden))
    want_h, want_c = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    gates = x @ w_ih.T + h @ w_hh.T + b_ih + b_hh
    buf = torch.full((rows, n_in + hidden), 7.0, dtype=dtype)
    c_t = c.clone()
    lstm_pointwise(gates, c_t, buf[:, n_in:])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(buf[:, n_in:], want_h, **tol)
    torch.testing.assert_close(c_t, want_c, **tol)
    assert bool((buf[:, :n_in] == 7.0).all())  # the x columns of the buffer are left alone
    input_gate = torch.sigmoid((x @ w_ih.T + h @ w_hh.T + b_ih + b_hh)[:, :hidden])
    torch.testing.assert_close(gates[:, :hidden], input_gate, **tol)  # the gates hold the activations


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_flat_pass_on_doubled_g_gates_is_the_per_row_pass(dtype) -> None:
    """``g_doubled``: with the g quarter of the pre-activations doubled, one sigmoid loop over the
    whole buffer gives the per-row pass's h and c: the same bits in float32, to rounding in
    float64 (its tanh is libm's). It refuses gates whose rows are not back to back."""
    from hiddenstate._kernels.fused import lstm_pointwise, pointwise_step

    torch.manual_seed(5)
    rows, hidden = 23, 7
    gates, c = torch.randn(rows, 4 * hidden, dtype=dtype) * 4, torch.randn(rows, hidden, dtype=dtype)
    doubled = gates.clone()
    doubled[:, 2 * hidden : 3 * hidden] *= 2
    want_h, want_c = torch.empty(rows, hidden, dtype=dtype), c.clone()
    lstm_pointwise(gates, want_c, want_h)
    buf, got_c = torch.zeros(rows, hidden + 3, dtype=dtype), c.clone()
    step = pointwise_step(got_c, buf[:, :hidden], g_doubled=True)
    step(doubled)
    if dtype == torch.float32:
        assert torch.equal(buf[:, :hidden], want_h) and torch.equal(got_c, want_c)
    else:
        torch.testing.assert_close(buf[:, :hidden], want_h, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(got_c, want_c, rtol=1e-14, atol=1e-14)
    assert bool((buf[:, hidden:] == 0).all())  # the x columns of the buffer are left alone
    with pytest.raises(ConfigError, match=r"the whole tensor contiguous"):
        step(torch.zeros(rows, 4 * hidden + 1, dtype=dtype)[:, : 4 * hidden])


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
@pytest.mark.parametrize(
    ("layers", "rows", "want"),
    [([hs.LSTM(40), hs.LSTM(40)], 2, "gemm_step"), ([hs.LSTM(40), hs.LSTM(40)], 700, "gemm_step"),
     ([hs.LSTM(128), hs.LSTM(128)], 2800, "gemm_step"), ([hs.LSTM(8)], 5600, "gemm_step"),
     ([hs.GRU(40), hs.LSTM(40)], 256, "cell_step"), ([hs.GRU(40), hs.LSTM(40)], 257, "kernel_step")],
)  # fmt: skip
def test_every_lstm_stack_takes_the_product_and_kernel_step(layers, rows, want) -> None:
    """With oneDNN's products the LSTM step beats the cell functions and the RNN kernel at every
    shape timed (docs/performance.md), so an LSTM stack takes it whatever its width and rows;
    a stack with another cell takes the cell functions up to 256 rows and the RNN kernel above."""
    from hiddenstate import paths

    model = hs.SequenceModel(2, 1, layers, likelihood="normal").eval()
    state = hs.State.zeros(model.state_spec, 1)
    assert paths._stepper(model, state.select(torch.zeros(rows, dtype=torch.long))).__name__ == want


@pytest.mark.skipif(not fused_available(), reason="no C compiler for the kernel")
def test_a_prepared_pointwise_step_reads_its_buffers_anew_and_keeps_them_alive() -> None:
    """``pointwise_step`` checks its state buffers once and then runs on their memory as it is at
    each call, with that call's gates: two steps of an LSTM cell through one prepared step equal
    two ``torch.lstm_cell`` calls. The step keeps its tensors: with every other reference gone and
    the freed sizes allocated again (filled with NaN), it still computes on its own."""
    import gc

    from hiddenstate._kernels.fused import pointwise_step

    torch.manual_seed(1)
    rows, n_in, hidden = 9, 3, 5
    w_ih, w_hh, b = torch.randn(4 * hidden, n_in), torch.randn(4 * hidden, hidden), torch.randn(4 * hidden)
    xs, h0, c0 = torch.randn(2, rows, n_in), torch.randn(rows, hidden), torch.randn(rows, hidden)
    h, c = h0, c0
    for x in xs:
        h, c = torch.lstm_cell(x, (h, c), w_ih, w_hh, b, torch.zeros(4 * hidden))
    xh = torch.cat([torch.zeros(rows, n_in), h0], 1)
    step = pointwise_step(c0.clone(), xh[:, n_in:])  # the cell state: referenced by the step only
    w = torch.cat([w_ih, w_hh], 1).T.contiguous()
    gc.collect()
    taken = [torch.full((rows, hidden), float("nan")) for _ in range(64)]  # what a freed c would become
    for x in xs:
        xh[:, :n_in] = x
        step(torch.addmm(b, xh, w))  # a fresh gates tensor at each step
    assert len(taken) == 64
    torch.testing.assert_close(xh[:, n_in:], h, rtol=1e-5, atol=1e-6)


def test_without_the_kernel_the_loop_takes_its_other_steps(monkeypatch) -> None:
    """A kernel that cannot be built (no compiler) leaves sampling working, through the cell
    functions, with the same paths to float rounding; the failed build is asked about once."""
    from hiddenstate import paths
    from hiddenstate._kernels import fused

    torch.manual_seed(2)
    model = hs.SequenceModel(2, 1, [hs.LSTM(6), hs.LSTM(6)], likelihood="normal").eval()
    state = warm(model, torch.randn(2, 30, 2))
    last, ahead = torch.randn(2, 2), torch.randn(2, 5, 2)
    want = sample_paths(model, state, last, 6, 20, seed=4, target_index=[0], ahead=ahead)
    calls = []

    def no_compiler() -> None:
        calls.append(1)
        raise ConfigError("the fused backend builds a small C kernel on first use and found no C compiler")

    monkeypatch.setattr(fused, "build_kernel", no_compiler)
    fused.kernel_ready.cache_clear()
    try:
        assert paths._stepper(model, state.select(torch.arange(2).repeat(20))).__name__ == "cell_step"
        got = [sample_paths(model, state, last, 6, 20, seed=4, target_index=[0], ahead=ahead) for _ in range(3)]
    finally:
        fused.kernel_ready.cache_clear()
    assert len(calls) == 1
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)


def test_lstm_pointwise_refuses_mismatched_tensors() -> None:
    from hiddenstate._kernels.fused import lstm_pointwise

    c = torch.zeros(4, 3)
    with pytest.raises(ConfigError, match=r"lstm_pointwise: expected CPU torch\.float32 gates \(4, 12\) .*\(4, 11\)"):
        lstm_pointwise(torch.zeros(4, 11), c, torch.zeros(4, 3))  # 11 gates, not 12
    with pytest.raises(ConfigError, match=r"lstm_pointwise: expected CPU torch\.float32 gates"):
        lstm_pointwise(torch.zeros(4, 12, dtype=torch.float64), c, torch.zeros(4, 3))  # mixed dtypes
    with pytest.raises(ConfigError, match=r"lstm_pointwise: expected CPU torch\.float32 gates"):
        lstm_pointwise(torch.zeros(12, 4).T, c, torch.zeros(4, 3))  # gate rows not contiguous
    with pytest.raises(ConfigError, match=r"lstm_pointwise: expected CPU float32/float64 c and h_out"):
        lstm_pointwise(torch.zeros(4, 12), c, torch.zeros(3, 4).T)  # h rows not contiguous
    with pytest.raises(ConfigError, match=r"lstm_pointwise: expected CPU float32/float64 c and h_out"):
        lstm_pointwise(torch.zeros(4, 12), c, torch.zeros(4, 2))  # h of another width


def test_bad_lagged_arguments() -> None:
    model = hs.SequenceModel(2, 1, [hs.LSTM(4)], likelihood="normal")
    state, last = hs.State.zeros(model.state_spec, 1), torch.zeros(1, 2)
    ahead = torch.zeros(1, 2, 2)
    for bad, msg in [
        ([(1, 0, 1)], "lag >= 2"),
        ([(2, 0, 3)], "0 <= column < 2"),
        ([(1, 1, 3)], "0 <= output < 1"),
        ([(0, 0, 3)], "cannot also be a target_index column"),
        ([(1, 0)], "int triples"),
        ([(1, 0, 2), (1, 0, 3)], "column 1 is named twice"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            sample_paths(model, state, last, 3, 2, target_index=[0], ahead=ahead, lagged=bad)
    with pytest.raises(ConfigError, match="lagged inputs need `ahead`"):
        sample_paths(model, state, last, 3, 2, target_index=[0], lagged=[(1, 0, 2)])

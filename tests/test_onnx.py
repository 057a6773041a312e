"""ONNX export in real onnxruntime sessions: chunked equals whole, every cell kind, reset, cond,
learned initial state, GRU exactness, folded scalers, metadata, OnnxStream and one-line refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hiddenstate as hs
from hiddenstate.errors import ConfigError, ExportError
from hiddenstate.runs.run import load_run, save_run

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[dev]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[dev]'")

from hiddenstate.interop import _onnx_graph  # noqa: E402
from hiddenstate.interop import onnx as hs_onnx  # noqa: E402
from hiddenstate.interop.onnx import OnnxStream, export_onnx  # noqa: E402


def _model(layers: list[hs.LayerSpec], seed: int = 0, **kwargs: object) -> hs.SequenceModel:
    torch.manual_seed(seed)
    model = hs.SequenceModel(2, 2, layers, **kwargs).eval()
    with torch.no_grad():  # weights well away from zero, so a wrong gate order shows
        for p in model.parameters():
            p.uniform_(-0.8, 0.8)
    return model


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _state_feeds(model: hs.SequenceModel, state: hs.State) -> dict[str, np.ndarray]:
    return {f"state_in.{n}": t.numpy() for n, t in zip(model.state_spec.names, state.tensors(), strict=True)}


def _stream(
    session: ort.InferenceSession, model: hs.SequenceModel, x: np.ndarray, chunks: list[int], reset_first: bool = True
) -> tuple[np.ndarray, list[np.ndarray]]:
    """onnxruntime over ``x`` in ``chunks``, each call's state_out fed back as state_in."""
    batch = x.shape[0]
    names = model.state_spec.names
    state = {
        f"state_in.{n}": np.full((batch, h), np.nan, np.float32)
        for n, h in zip(names, [s for sizes in model.state_spec.state_size for s in sizes], strict=True)
    }
    ys, start = [], 0
    for k, steps in enumerate(chunks):
        reset = np.full(batch, reset_first and k == 0)
        out = session.run(None, {"x": x[:, start : start + steps], **state, "reset": reset})
        ys.append(out[0])
        state = {f"state_in.{n}": v for n, v in zip(names, out[1:], strict=True)}
        start += steps
    return np.concatenate(ys, axis=1), list(state.values())


def _whole(model: hs.SequenceModel, x: np.ndarray, **kwargs: object) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.no_grad():
        y, state = model(torch.from_numpy(x), **kwargs)
    return y.numpy(), [t.numpy() for t in state.tensors()]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_chunked_onnxruntime_equals_the_whole_sequence_in_torch(tmp_path: Path, batch: int) -> None:
    model = _model([hs.LSTM(8), hs.LSTM(8)])
    report = export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(batch).standard_normal((batch, 157, 2)).astype(np.float32)
    y, states = _stream(_session(tmp_path / "m.onnx"), model, x, [1, 7, 96, 3, 50])
    want_y, want_states = _whole(model, x)
    assert _max_diff([y, *states], [want_y, *want_states]) < 1e-5
    assert report.verified and report.worst < 1e-5
    assert [c["batch"] for c in report.checks] == [1, 7]


@pytest.mark.parametrize(
    "layers",
    [[hs.LSTM(8)], [hs.GRU(8)], [hs.RNN(8)], [hs.LSTM(8), hs.GRU(5), hs.RNN(3), hs.LSTM(16)]],
    ids=["lstm", "gru", "rnn", "mixed"],
)
def test_each_cell_kind_is_one_onnx_node_and_matches(tmp_path: Path, layers: list[hs.LayerSpec]) -> None:
    model = _model(layers, seed=1)
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    recurrent = [n.op_type for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert recurrent == [ls.cell.upper() for ls in model.state_spec.layers]
    assert not [n for n in proto.graph.node if n.op_type in ("Loop", "Scan")]  # no per-step unrolling
    x = np.random.default_rng(2).standard_normal((4, 60, 2)).astype(np.float32)
    y, states = _stream(_session(tmp_path / "m.onnx"), model, x, [13, 47])
    assert _max_diff([y, *states], list(_whole(model, x)[:1]) + _whole(model, x)[1]) < 1e-5
    names = [i.name for i in proto.graph.input]
    assert names == ["x", *(f"state_in.{n}" for n in model.state_spec.names), "reset"]
    assert [o.name for o in proto.graph.output] == ["y", *(f"state_out.{n}" for n in model.state_spec.names)]


def test_batch_and_steps_are_dynamic_in_the_graph(tmp_path: Path) -> None:
    export_onnx(_model([hs.LSTM(8)]), tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.input}
    assert dims == {
        "x": ["batch", "steps", 2],
        "state_in.layers.0.h": ["batch", 8],
        "state_in.layers.0.c": ["batch", 8],
        "reset": ["batch"],
    }


def test_gru_exactness_and_the_linear_before_reset_trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's GRU is ONNX's linear_before_reset=1; the =0 cell (what onnxscript < 0.7.1 wrote)
    differs by far more than the tolerance, and the export check refuses it, writing nothing."""
    model = _model([hs.GRU(16), hs.GRU(16)], seed=3)
    report = export_onnx(model, tmp_path / "good.onnx")
    assert report.max_abs_diff["state_out.layers.1.h"] < 1e-5
    x = np.random.default_rng(4).standard_normal((7, 96, 2)).astype(np.float32)
    good = _stream(_session(tmp_path / "good.onnx"), model, x, [96])
    want = _whole(model, x)
    assert _max_diff([good[0], *good[1]], [want[0], *want[1]]) < 1e-5

    real = _onnx_graph.build_graph

    def wrong_gru(plan: object, opset: int) -> object:
        proto = real(plan, opset)
        for node in proto.graph.node:
            for attr in node.attribute:
                if node.op_type == "GRU" and attr.name == "linear_before_reset":
                    attr.i = 0
        return proto

    monkeypatch.setattr(_onnx_graph, "build_graph", wrong_gru)
    bad_bytes, _ = hs_onnx.model_bytes(model)
    bad = ort.InferenceSession(bad_bytes, providers=["CPUExecutionProvider"])
    wrong = _stream(bad, model, x, [96])
    assert _max_diff([wrong[0], *wrong[1]], [want[0], *want[1]]) > 1e-3
    with pytest.raises(
        ExportError, match=r"^verification: (y|state_out\.layers\.\d\.h) differs by .* at batch 1, chunk"
    ) as info:
        export_onnx(model, tmp_path / "bad.onnx")
    assert "the model's float32 and float64 agree to" in str(info.value)  # the graph is at fault, not rounding
    assert not (tmp_path / "bad.onnx").exists()


def test_learned_initial_state_and_the_reset_input(tmp_path: Path) -> None:
    model = _model([hs.LSTM(6), hs.GRU(4)], seed=5, state_encoder="learned")
    export_onnx(model, tmp_path / "m.onnx")
    session = _session(tmp_path / "m.onnx")
    x = np.random.default_rng(6).standard_normal((3, 20, 2)).astype(np.float32)
    # a reset row starts from the learned state, whatever (NaN) its state_in holds
    y, states = _stream(session, model, x, [20])
    want_y, want_states = _whole(model, x)
    assert _max_diff([y, *states], [want_y, *want_states]) < 1e-5
    with torch.no_grad():
        zero_y, _ = model(torch.from_numpy(x), hs.State.zeros(model.state_spec, 3))
    assert float(np.abs(zero_y.numpy() - want_y).max()) > 1e-3  # the learned state matters here
    # mid-stream, row 1 resets: it equals a fresh row on the same steps; the others carry on
    with torch.no_grad():
        _, carried = model(torch.from_numpy(x[:, :10]))
    feeds = {"x": x[:, 10:], **_state_feeds(model, carried), "reset": np.array([False, True, False])}
    out = session.run(None, feeds)
    fresh_y, _ = _whole(model, x[1:2, 10:])
    assert float(np.abs(out[0][1] - fresh_y[0]).max()) < 1e-5
    assert float(np.abs(out[0][[0, 2]] - want_y[[0, 2], 10:]).max()) < 1e-5


def test_cond_input_sets_the_state_of_reset_rows_only(tmp_path: Path) -> None:
    model = _model([hs.LSTM(6), hs.LSTM(6)], seed=7, state_encoder="cond:2")
    report = export_onnx(model, tmp_path / "m.onnx")
    assert "cond" in report.inputs and report.inputs["cond"] == ["batch", 2]
    session = _session(tmp_path / "m.onnx")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 12, 2)).astype(np.float32)
    cond = rng.standard_normal((4, 2)).astype(np.float32)
    with torch.no_grad():
        want_y, start = model(torch.from_numpy(x), cond=torch.from_numpy(cond))
    nan_state = {k: np.full_like(v, np.nan) for k, v in _state_feeds(model, start).items()}
    out = session.run(None, {"x": x, **nan_state, "reset": np.ones(4, bool), "cond": cond})
    assert float(np.abs(out[0] - want_y.numpy()).max()) < 1e-5
    # rows that do not reset ignore cond entirely
    state = _state_feeds(model, start)
    a = session.run(None, {"x": x, **state, "reset": np.array([True, False, False, False]), "cond": cond})
    b = session.run(None, {"x": x, **state, "reset": np.array([True, False, False, False]), "cond": cond * 5})
    np.testing.assert_array_equal(a[0][1:], b[0][1:])
    assert float(np.abs(a[0][0] - b[0][0]).max()) > 1e-3


def _run_with_scaler(tmp_path: Path, layers: list[hs.LayerSpec], **kwargs: object) -> Path:
    model = _model(layers, seed=9, **kwargs)
    scaler = hs.StandardScaler(np.array([10.0, -3.0]), np.array([4.0, 0.5]), ("load", "temp"))
    save_run(tmp_path / "run", model, scaler=scaler, inputs=["load", "temp"], targets=["load", "temp"])
    return tmp_path / "run"


def test_a_run_folds_its_scalers_in_and_normalised_leaves_them_out(tmp_path: Path) -> None:
    run_dir = _run_with_scaler(tmp_path, [hs.LSTM(8), hs.LSTM(8)])
    run = load_run(run_dir)
    original = export_onnx(run_dir, tmp_path / "orig.onnx")
    normalised = export_onnx(run, tmp_path / "norm.onnx", units="normalised")
    assert (original.units, normalised.units) == ("original", "normalised")
    x = (np.random.default_rng(10).standard_normal((2, 30, 2)) * [4.0, 0.5] + [10.0, -3.0]).astype(np.float32)
    x_norm = run.scaler.transform(x.astype(np.float64)).astype(np.float32)
    want_norm, _ = _whole(run.model, x_norm)
    want = run.scaler.inverse_transform(want_norm.astype(np.float64))
    y, _ = _stream(_session(tmp_path / "orig.onnx"), run.model, x, [30])
    assert float(np.abs(y - want).max()) < 1e-4  # original units, scale 4
    y_norm, _ = _stream(_session(tmp_path / "norm.onnx"), run.model, x_norm, [30])
    assert float(np.abs(y_norm - want_norm).max()) < 1e-5


def test_metadata_names_the_state_and_the_versions(tmp_path: Path) -> None:
    model = _model([hs.LSTM(8), hs.GRU(4)])
    export_onnx(model, tmp_path / "m.onnx", opset=18)
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta["hiddenstate.state_names"]) == ["layers.0.h", "layers.0.c", "layers.1.h"]
    assert json.loads(meta["hiddenstate.state_shapes"])["layers.1.h"] == ["batch", 4]
    assert meta["hiddenstate.fingerprint"] == model.state_spec.fingerprint()
    assert meta["hiddenstate.version"] == hs.__version__
    assert meta["torch.version"] == torch.__version__
    assert meta["onnxscript.version"] == hs_onnx.onnxscript_version()
    assert meta["opset"] == "18"
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == 18


def test_a_sequential_head_exports_and_an_unknown_head_module_is_refused(tmp_path: Path) -> None:
    model = _model([hs.LSTM(8)], state_encoder="learned")  # (initial_state's zeros read head.weight)
    model.head = nn.Sequential(nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 2))
    assert export_onnx(model, tmp_path / "m.onnx").worst < 1e-5
    model.head = nn.Sequential(nn.Linear(8, 2), nn.LayerNorm(2))
    with pytest.raises(ConfigError, match=r"^model.head\[1\]: LayerNorm has no ONNX export here"):
        export_onnx(model, tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


def test_old_onnxscript_is_refused_for_gru_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hs_onnx, "onnxscript_version", lambda: "0.7.0")
    with pytest.raises(ConfigError) as info:
        export_onnx(_model([hs.LSTM(4), hs.GRU(4)]), tmp_path / "g.onnx")
    assert str(info.value) == (
        "layer 1 (gru): onnxscript 0.7.0 exports GRU with linear_before_reset=0, wrong by up to 0.1; "
        "pip install 'onnxscript>=0.7.1'"
    )
    assert not (tmp_path / "g.onnx").exists()
    assert export_onnx(_model([hs.LSTM(4)]), tmp_path / "l.onnx").verified  # LSTM is not affected


@pytest.mark.parametrize("version", ["0.7.0rc1", "0.7.0a2", "0.7.0.dev20250101", "0.6.12"])
def test_a_pre_release_of_the_fixed_onnxscript_is_refused_for_gru(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(hs_onnx, "onnxscript_version", lambda: version)
    with pytest.raises(ConfigError, match=rf"^layer 0 \(gru\): onnxscript {re.escape(version)} exports GRU"):
        export_onnx(_model([hs.GRU(4)]), tmp_path / "g.onnx")
    assert hs_onnx._release("0.7.10") > hs_onnx._release("0.7.1") > hs_onnx._release("0.7.0rc9")


def test_bad_arguments_get_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"file: the output folder is a file$"):
        export_onnx(_model([hs.LSTM(4)]), tmp_path / "file" / "m.onnx")
    with pytest.raises(ConfigError, match=r"^units 'kelvin': expected 'original' or 'normalised'$"):
        export_onnx(_model([hs.LSTM(4)]), tmp_path / "m.onnx", units="kelvin")
    with pytest.raises(hs.CheckpointError, match=r"no_run: run directory not found$"):
        export_onnx(tmp_path / "no_run", tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"^opset 9: expected an int from 14 to"):
        export_onnx(_model([hs.LSTM(4)]), tmp_path / "m.onnx", opset=9)


def test_onnx_stream_gives_the_library_numbers(tmp_path: Path) -> None:
    model = _model([hs.LSTM(8), hs.GRU(6)], seed=11, state_encoder="learned")
    export_onnx(model, tmp_path / "m.onnx")
    stream = OnnxStream(tmp_path / "m.onnx", batch_size=3)
    x = np.random.default_rng(12).standard_normal((3, 25, 2)).astype(np.float32)
    ys = [stream.step(x[:, t]) for t in range(10)] + [stream.step(x[:, 10:])]
    got = np.concatenate([np.stack(ys[:10], axis=1), ys[10]], axis=1)
    want_y, want_states = _whole(model, x)
    assert got.shape == (3, 25, 2)
    assert float(np.abs(got - want_y).max()) < 1e-5
    assert _max_diff(list(stream.state.values()), want_states) < 1e-5
    assert list(stream.state) == ["layers.0.h", "layers.0.c", "layers.1.h"]
    # reset(rows): that row starts afresh, as a new stream would
    stream.reset([2])
    y = stream.step(x[:, :5])
    fresh = OnnxStream(tmp_path / "m.onnx", batch_size=1).step(x[2:3, :5])
    assert float(np.abs(y[2] - fresh[0]).max()) < 1e-6
    # a stored state continues the stream
    saved = stream.state
    again = OnnxStream(tmp_path / "m.onnx", batch_size=3)
    again.state = saved
    np.testing.assert_allclose(again.step(x[:, 5:9]), stream.step(x[:, 5:9]), atol=1e-6)
    with pytest.raises(hs.ShapeError, match=r"^x: expected shape \(batch=3, steps>=1, input=2\), got \(3, 4\)$"):
        stream.step(np.zeros((3, 4)))


def test_onnx_stream_reset_takes_a_mask_as_the_model_does(tmp_path: Path) -> None:
    model = _model([hs.LSTM(8)], seed=3)
    export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(4).standard_normal((3, 6, 2)).astype(np.float32)
    by_mask, by_rows = OnnxStream(tmp_path / "m.onnx", batch_size=3), OnnxStream(tmp_path / "m.onnx", batch_size=3)
    for s in (by_mask, by_rows):
        s.step(x)
    by_mask.reset(np.array([False, False, True]))
    by_rows.reset([2])
    a, b = by_mask.step(x[:, :3]), by_rows.step(x[:, :3])
    np.testing.assert_array_equal(a, b)
    fresh = OnnxStream(tmp_path / "m.onnx", batch_size=1).step(x[2:3, :3])
    assert float(np.abs(a[2] - fresh[0]).max()) < 1e-6 and float(np.abs(a[0] - fresh[0]).max()) > 1e-3
    with pytest.raises(hs.ShapeError, match=r"^reset: a mask must have shape \(batch=3,\), got \(2,\)$"):
        by_mask.reset(np.array([True, False]))
    with pytest.raises(hs.ShapeError, match=r"^reset: rows must be indices in \[0, 3\), got \[3\]$"):
        by_mask.reset([3])


def test_onnx_stream_does_not_touch_torch() -> None:
    """The runner's module imports no torch and no exporter: deploy targets run it with numpy alone."""
    from hiddenstate.interop import _onnx_stream

    source = Path(_onnx_stream.__file__).read_text()
    assert not re.search(r"^\s*(import|from) (torch|hiddenstate\.interop\.onnx)\b", source, re.M)
    assert "torch." not in source
    assert "import " not in source[source.index("class OnnxStream") :]  # nothing imported on first use either
    assert hs_onnx.OnnxStream is _onnx_stream.OnnxStream


def test_the_export_benchmark_runs(tmp_path: Path) -> None:
    # its own process: the in-process uvicorn servers of --serve outlive pytest's output capture
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "export.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--serve", "4"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| tiny   | 1 stream, 1 step " in result.stdout
    assert "onnxruntime" in result.stdout


class _SilentLastStep(hs.SequenceModel):
    """A model whose y is the last step only, without saying so (``return_sequences`` stays True)."""

    def forward(self, x, state=None, *, cond=None, reset=None):  # type: ignore[no-untyped-def]
        y, state = super().forward(x, state, cond=cond, reset=reset)
        return y[:, -1], state


def test_a_last_step_model_exports_and_an_unannounced_one_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(6)], state_encoder="learned", return_sequences=False).eval()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.outputs["y"] == ["batch", 2] and report.worst < 1e-5
    x = np.random.default_rng(13).standard_normal((3, 9, 2)).astype(np.float32)
    y, _ = _stream(_session(tmp_path / "m.onnx"), model, x, [9])
    with torch.no_grad():
        want, _ = model(torch.from_numpy(x))
    assert y.shape == (3, 2) and float(np.abs(y - want.numpy()).max()) < 1e-5
    silent = _SilentLastStep(2, 2, [hs.LSTM(6)], state_encoder="learned").eval()
    with pytest.raises(ExportError, match=r"^verification: y has shape \(1, 1, 2\) in onnxruntime and \(1, 2\)"):
        export_onnx(silent, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


def test_a_float64_model_is_checked_in_float32_and_left_as_it_was(tmp_path: Path) -> None:
    model = _model([hs.GRU(5)]).double()
    assert export_onnx(model, tmp_path / "m.onnx").worst < 1e-5
    assert next(model.parameters()).dtype == torch.float64 and not model.training


def test_without_the_reset_input(tmp_path: Path) -> None:
    model = _model([hs.LSTM(6)], state_encoder="learned")
    report = export_onnx(model, tmp_path / "m.onnx", reset=False)
    assert "reset" not in report.inputs and report.worst < 1e-5
    with pytest.raises(ConfigError, match=r"^a model with a state encoder needs the reset input"):
        export_onnx(_model([hs.LSTM(6)], state_encoder="cond:2"), tmp_path / "c.onnx", reset=False)
    stream = OnnxStream(tmp_path / "m.onnx", batch_size=2)  # no reset input: lanes start from zeros
    x = np.random.default_rng(14).standard_normal((2, 5, 2)).astype(np.float32)
    with torch.no_grad():
        want, _ = model(torch.from_numpy(x), hs.State.zeros(model.state_spec, 2))
    assert float(np.abs(stream.step(x) - want.numpy()).max()) < 1e-5


def test_a_model_that_amplifies_rounding_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Large random weights make a chaotic stack: torch's own float32 and float64 part by more
    than 1e-5 within the check's 157 steps, so no float32 runtime can pass it, and the error says so."""
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(128), hs.LSTM(64)]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    with pytest.raises(ExportError, match=r"the model itself moves by .* between float32 and float64"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_likelihood_model_is_refused_by_name(tmp_path: Path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)], likelihood="studentt")
    with pytest.raises(ConfigError, match=r"^model.likelihood 'studentt': a likelihood head has no ONNX export here"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_another_model_kind_is_refused_in_one_line(tmp_path: Path) -> None:
    """A SegRNN has an ``rnn`` and a ``head`` too, but segments and embeds its input first: it is
    refused by name instead of failing in onnx's shape inference."""
    from hiddenstate.models.segrnn import SegRNN

    model = SegRNN(2, input_len=8, horizon=4, seg_len=4, d_model=8)
    with pytest.raises(ConfigError) as info:
        export_onnx(model, tmp_path / "m.onnx")
    assert str(info.value) == "export_onnx takes a hiddenstate SequenceModel (or a run of one), got SegRNN"
    assert not (tmp_path / "m.onnx").exists()

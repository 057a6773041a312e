"""``hiddenstate export`` and the Triton model repository: the config parsed with Triton's own
schema, every state paired with the graph's names and dims, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hiddenstate as hs
from hiddenstate.cli.commands import app
from hiddenstate.errors import ConfigError, ExportError
from hiddenstate.runs.run import load_run, save_run

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[dev]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[dev]'")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient.grpc.model_config_pb2 is in the dev extra: pip install -e '.[dev]'",
)
text_format = pytest.importorskip(
    "google.protobuf.text_format", reason="google.protobuf.text_format is in the dev extra: pip install -e '.[dev]'"
)

from hiddenstate.interop.triton import check_state_pairing, write_triton_repository  # noqa: E402

runner = CliRunner()


def _run(tmp_path: Path, layers: list[hs.LayerSpec], **kwargs: object) -> Path:
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, layers, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.8, 0.8)
    scaler = hs.StandardScaler(np.array([10.0, -3.0]), np.array([4.0, 0.5]), ("load", "temp"))
    save_run(tmp_path / "run", model, scaler=scaler, inputs=["load", "temp"], targets=["load", "temp"])
    return tmp_path / "run"


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _graph_dims(proto: object, which: str) -> dict[str, list[object]]:
    values = getattr(proto.graph, which)  # type: ignore[attr-defined]
    return {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in values}


def test_cli_triton_repository_parses_and_pairs_with_the_graph(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, [hs.LSTM(8), hs.GRU(5), hs.LSTM(3)], state_encoder="learned")
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "repo"), "--triton", "--name", "seed"])
    assert result.exit_code == 0, result.output
    assert "batch 7: max |diff|" in result.output
    folder = tmp_path / "repo" / "seed"
    config = _config(folder / "config.pbtxt")
    proto = onnx.load(folder / "1" / "model.onnx")
    inputs, outputs = _graph_dims(proto, "input"), _graph_dims(proto, "output")

    assert (config.name, config.backend, config.max_batch_size) == ("seed", "onnxruntime", 64)
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "oldest"
    (control,) = batching.control_input
    assert control.name == "reset" and control.name in inputs and inputs["reset"] == ["batch", 1]
    assert control.control[0].kind == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    assert list(control.control[0].bool_false_true) == [False, True]
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, 2])]
    assert inputs["x"] == ["batch", "steps", 2]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [-1, 2])]

    names = ["layers.0.h", "layers.0.c", "layers.1.h", "layers.2.h", "layers.2.c"]
    assert sorted(s.input_name for s in batching.state) == sorted(f"state_in.{n}" for n in names)
    # Triton pairs the state inputs and outputs by position in sorted order: each pair must be one tensor
    by_in = sorted(batching.state, key=lambda s: s.input_name)
    by_out = sorted(batching.state, key=lambda s: s.output_name)
    for a, b in zip(by_in, by_out, strict=True):
        assert a.input_name.removeprefix("state_in.") == b.output_name.removeprefix("state_out.")
    for s in batching.state:
        assert s.input_name in inputs and s.output_name in outputs
        assert inputs[s.input_name] == ["batch", *s.dims] == outputs[s.output_name]  # Triton adds the batch
        assert s.data_type == model_config_pb2.TYPE_FP32
        (init,) = s.initial_state
        assert list(init.dims) == list(s.dims) and init.WhichOneof("state_data") == "data_file"
        raw = np.frombuffer((folder / "initial_state" / init.data_file).read_bytes(), np.float32)
        assert raw.shape == (s.dims[0],)
    # the data files hold the learned initial state, the one the graph's reset rows start from
    model = load_run(run_dir).model
    files = {n: np.frombuffer((folder / "initial_state" / n).read_bytes(), np.float32) for n in names}
    with torch.no_grad():
        learned = model.learned(2)
    for n, t in zip(names, learned.tensors(), strict=True):
        np.testing.assert_allclose(files[n], t[0].detach().numpy(), atol=1e-7)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    nan = {f"state_in.{n}": np.full((2, v.size), np.nan, np.float32) for n, v in files.items()}
    from_files = {f"state_in.{n}": np.tile(v, (2, 1)) for n, v in files.items()}
    fresh = session.run(None, {"x": x, **nan, "reset": np.ones((2, 1), bool)})
    carried = session.run(None, {"x": x, **from_files, "reset": np.zeros((2, 1), bool)})
    for a, b in zip(fresh, carried, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_zero_initial_state_and_cond_input_in_the_triton_config(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, [hs.LSTM(4)], state_encoder="cond:2")
    report = write_triton_repository(run_dir, tmp_path / "repo", "cond_model")
    config = _config(tmp_path / "repo" / "cond_model" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, 2]), ("cond", [2])]
    for s in config.sequence_batching.state:
        (init,) = s.initial_state
        assert init.WhichOneof("state_data") == "zero_data" and init.zero_data
    assert report.verified and report.worst < 1e-5


def test_state_pairing_check_refuses_names_that_sort_apart() -> None:
    good = [("state_in.layers.0.h", "state_out.layers.0.h"), ("state_in.layers.0.c", "state_out.layers.0.c")]
    assert check_state_pairing(good) == sorted(good)
    bad = [("state_in.a", "state_out.z"), ("state_in.b", "state_out.y")]
    with pytest.raises(ExportError, match=r"^Triton would pair state input state_in\.a with output state_out\.y, not"):
        check_state_pairing(bad)


@pytest.mark.parametrize("name", ["..", ".", "", "bad name"])
def test_a_model_name_that_is_not_one_folder_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    with pytest.raises(ConfigError) as info:
        write_triton_repository(model, tmp_path / "repo" / "sub", name)
    assert str(info.value) == (
        f"model name {name!r}: use letters, digits, '_', '-' and '.' only, starting with a letter, digit or '_'"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # ".." would have put config.pbtxt in repo/


def test_cli_default_model_name_is_the_run_folders_made_safe(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, [hs.LSTM(4)]).rename(tmp_path / ".my run")
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "repo"), "--triton"])
    assert result.exit_code == 0, result.output
    assert _config(tmp_path / "repo" / "my_run" / "config.pbtxt").name == "my_run"


def test_cli_export_onnx_file(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, [hs.GRU(6)])
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "out"), "--units", "normalised"])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(tmp_path / "out" / "model.onnx").metadata_props}
    assert meta["hiddenstate.units"] == "normalised"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{tmp}/missing", "--out", "{tmp}/o"], 1, "Error: {tmp}/missing: run directory not found"),
        (
            ["{run}", "--out", "{tmp}/o", "--format", "tflite"],
            2,
            "Error: Invalid value: --format 'tflite': expected one of onnx (see 'hiddenstate export --help')",
        ),
        (["{run}", "--out", "{tmp}/file"], 1, "Error: --out {tmp}/file: the output folder is a file"),
        (
            ["{run}", "--out", "{tmp}/o", "--name", "x"],
            2,
            "Error: Invalid value: --name names the Triton model; add --triton (see 'hiddenstate export --help')",
        ),
        (
            ["{run}", "--out", "{tmp}/o", "--opset", "9"],
            2,
            "Error: Invalid value for --opset: opset 9: expected an int from 14 to {max_opset} "
            "(see 'hiddenstate export --help')",
        ),
        (
            ["{run}", "--out", "{tmp}/o", "--triton", "--name", ".."],
            2,
            "Error: Invalid value for --name: model name '..': use letters, digits, '_', '-' and '.' only, "
            "starting with a letter, digit or '_' (see 'hiddenstate export --help')",
        ),
    ],
    ids=["missing-run", "unknown-format", "out-is-a-file", "name-without-triton", "opset-too-old", "name-dots"],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    run_dir = _run(tmp_path, [hs.LSTM(4)])
    (tmp_path / "file").write_text("not a folder")
    argv = ["export", *(a.format(tmp=tmp_path, run=run_dir) for a in args)]
    result = runner.invoke(app, argv)
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert lines == [message.format(tmp=tmp_path, max_opset=onnx.defs.onnx_opset_version())]
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_gru_run_with_old_onnxscript_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hiddenstate.interop import onnx as hs_onnx

    monkeypatch.setattr(hs_onnx, "onnxscript_version", lambda: "0.6.2")
    run_dir = _run(tmp_path, [hs.GRU(4)])
    for extra in ([], ["--triton"]):
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "o"), *extra])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "Error: layer 0 (gru): onnxscript 0.6.2 exports GRU with linear_before_reset=0, wrong by up to 0.1; "
            "pip install 'onnxscript>=0.7.1'"
        ]
    assert not (tmp_path / "o").exists()


def test_a_trained_run_exports_and_onnx_stream_gives_its_numbers_in_original_units(tmp_path: Path) -> None:
    from hiddenstate.interop.onnx import OnnxStream

    args = ["train", "--out", str(tmp_path / "run"), "--synthetic-steps", "600", "--epochs", "1", "--hidden", "8"]
    trained = runner.invoke(app, [*args, "--steps", "24", "--batch-size", "4", "--horizon", "8", "--no-plots"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    rng = np.random.default_rng(3)
    x = (run.scaler.mean + run.scaler.std * rng.standard_normal((2, 30, len(run.inputs)))).astype(np.float32)
    stream = OnnxStream(tmp_path / "out" / "model.onnx", batch_size=2)
    got = np.concatenate([stream.step(x[:, :11]), stream.step(x[:, 11:12]), stream.step(x[:, 12:])], axis=1)
    with torch.no_grad():
        y_norm, _ = run.model(torch.from_numpy(run.scaler.transform(x.astype(np.float64)).astype(np.float32)))
    tidx = [run.inputs.index(t) for t in run.targets]
    want = run.scaler.select(tidx).inverse_transform(y_norm.double().numpy())
    assert float((np.abs(got - want) / run.scaler.select(tidx).std).max()) < 1e-5


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_re_export_replaces_the_model_folder_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A learned initial state, then a model without one: the new folder holds no stale state
    files. A failure while the new folder is written leaves the old one as it was, byte for byte,
    and no temp folder behind."""
    learned = _run(tmp_path / "a", [hs.LSTM(4)], state_encoder="learned")
    plain = _run(tmp_path / "b", [hs.LSTM(3)])
    repo = tmp_path / "repo"
    write_triton_repository(learned, repo, "m")
    assert sorted(_tree(repo / "m")) == ["1/model.onnx", "config.pbtxt", "initial_state/layers.0.c",
                                         "initial_state/layers.0.h"]  # fmt: skip
    write_triton_repository(plain, repo, "m")
    assert sorted(_tree(repo / "m")) == ["1/model.onnx", "config.pbtxt"]  # no stale initial_state/
    states = _config(repo / "m" / "config.pbtxt").sequence_batching.state
    assert [s.initial_state[0].WhichOneof("state_data") for s in states] == ["zero_data"] * 2
    before = _tree(repo / "m")

    import hiddenstate.runs.files as files

    real, calls = files.write_fsynced, []

    def fail_on_the_config(path: Path, data: bytes, **kw: object) -> None:
        calls.append(path.name)
        if path.name == "config.pbtxt":
            raise OSError(28, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(files, "write_fsynced", fail_on_the_config)
    with pytest.raises(OSError, match="No space left"):
        write_triton_repository(learned, repo, "m")
    assert "model.onnx" in calls  # the new model was written, and still the old folder is whole
    assert _tree(repo / "m") == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no temp folder left


def test_a_model_folder_holding_files_an_export_does_not_write_is_refused(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, [hs.LSTM(4)])
    repo = tmp_path / "repo"
    write_triton_repository(run_dir, repo, "m")
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"another version")
    (repo / "m" / "1" / "notes.txt").write_text("mine")
    before = _tree(repo / "m")
    with pytest.raises(ConfigError) as info:
        write_triton_repository(run_dir, repo, "m")
    assert str(info.value) == (
        f"{repo / 'm'} holds 1/notes.txt, 2, which an export does not write and a re-export would remove; "
        "move them away or choose another name"
    )
    assert _tree(repo / "m") == before
    (repo / "x").write_text("a file")
    with pytest.raises(ConfigError, match=r"x: is a file, not a model folder$"):
        write_triton_repository(run_dir, repo, "x")


@pytest.mark.parametrize("size", [0, 2**31, True, 1.5])
def test_a_max_batch_size_triton_cannot_hold_is_refused_and_nothing_is_written(tmp_path: Path, size: object) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    with pytest.raises(ConfigError) as info:
        write_triton_repository(model, tmp_path / "repo", "m", max_batch_size=size)  # type: ignore[arg-type]
    assert str(info.value) == f"max_batch_size must be an int from 1 to 2147483647 (Triton's int32), got {size!r}"
    assert not (tmp_path / "repo").exists()
    write_triton_repository(model, tmp_path / "repo", "m", max_batch_size=2**31 - 1)
    assert _config(tmp_path / "repo" / "m" / "config.pbtxt").max_batch_size == 2**31 - 1

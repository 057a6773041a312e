"""hs.keras.save: an hs model as a .keras file that Keras loads and predicts the same (to 1e-5);
and ``hiddenstate import keras`` as a run directory that trains, serves and inspects."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="h5py is in the keras extra: pip install -e '.[dev]'")
keras = pytest.importorskip("keras", reason="keras is in the keras extra: pip install -e '.[dev]'")

import hiddenstate as hs  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


MODELS = {
    "lstm gru rnn, dense, softmax head": lambda: hs.SequenceModel(
        3, 2, [hs.LSTM(6), hs.GRU(5), hs.RNN(4)], dropout=0.1, head_activation="softmax", dense=[(7, "relu")]
    ),
    "stateful, last step, no biases": lambda: hs.SequenceModel(
        2,
        3,
        [hs.GRU(4), hs.LSTM(5)],
        rnn_bias=[False, True],
        head_bias=False,
        return_sequences=False,
        stateful=True,
        batch_size=4,
    ),
    "plain seed-like lstm stack": lambda: hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)], head_dropout=0.2),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_round_trip_through_keras(tmp_path: Path, case: str) -> None:
    model = _randomized(MODELS[case](), seed=len(case))
    path = hs.keras.save(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(path)
    x = torch.randn(4, 13, model.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = model(x)
    got = np.asarray(loaded.predict(x.numpy(), batch_size=4, verbose=0))
    diff = float(np.abs(got - want.numpy()).max())
    print(f"\nround trip {case}: max |keras - hiddenstate| = {diff:.3g}")
    assert got.shape == tuple(want.shape) and diff < 1e-5
    # and back again: the file imports to the same numbers
    again = hs.keras.load(path)
    with torch.no_grad():
        assert float((again(x)[0] - want).abs().max()) < 1e-5
    assert (again.stateful, again.batch_size, again.return_sequences) == (
        model.stateful,
        model.batch_size,
        model.return_sequences,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"state_encoder": "learned"},
            "hs.keras.save: state_encoder='learned' (a learned initial state) cannot be represented in Keras, "
            "whose recurrent layers start from zeros",
        ),
        (
            {"state_encoder": "cond:2"},
            "hs.keras.save: state_encoder='cond:2' (an initial state encoded from cond) cannot be represented in "
            "Keras, whose recurrent layers start from zeros",
        ),
        ({"horizon": 4}, "hs.keras.save: the direct head (horizon=4) has no place in a Keras Sequential"),
        (
            {"likelihood": "normal"},
            "hs.keras.save: likelihood='normal' outputs a distribution's parameters per step, which a Keras Dense "
            "layer has no way to say",
        ),
    ],
)
def test_save_refuses_what_keras_cannot_represent(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)], **kwargs)
    with pytest.raises(hs.ConfigError, match=f"^{re.escape(message)}$"):
        hs.keras.save(model, tmp_path / "m.keras")
    assert not list(tmp_path.iterdir())  # nothing written


def test_round_trip_keeps_which_layers_are_stateful(tmp_path: Path) -> None:
    # The seed model: Keras carries layer 0 only; written back, layer 1 must still start from zeros.
    source = keras.Sequential(
        [
            keras.Input(batch_shape=(10, 96, 2)),
            keras.layers.LSTM(8, stateful=True, return_sequences=True),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(2)),
        ]
    )
    rng = np.random.default_rng(0)
    for w in source.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    source.save(tmp_path / "seed.keras")
    imported = hs.keras.load(tmp_path / "seed.keras")
    assert imported.stateful_layers == (True, False) and imported.config()["stateful"] == [True, False]
    assert hs.build_model(imported.config()).stateful_layers == (True, False)
    back = keras.saving.load_model(hs.keras.save(imported, tmp_path / "back.keras"))
    assert [layer.stateful for layer in back.layers[:2]] == [True, False]
    for _ in range(2):  # the second batch starts from the carried layer 0 and a zero layer 1 in both
        x = rng.normal(size=(10, 96, 2)).astype("float32")
        want = np.asarray(source.predict_on_batch(x))
        assert float(np.abs(np.asarray(back.predict_on_batch(x)) - want).max()) < 1e-5


# -- hiddenstate import keras --------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model = keras.Sequential(
        [
            keras.Input(shape=(None, 2)),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.GRU(5, return_sequences=False),
            keras.layers.Dense(2),
        ]
    )
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    path = tmp_path_factory.mktemp("cli") / "last_step.keras"
    model.save(path)
    return path, model


def test_cli_import_writes_a_run(keras_file: tuple[Path, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli.commands import app

    path, kmodel = keras_file
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["import", "keras", str(path), "--out", str(out), "--inputs", "a,b", "--targets", "a,b"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["source"] == {
        "format": "keras",
        "file": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert manifest["scaler"] is None and manifest["inputs"] == ["a", "b"]
    from hiddenstate.runs.run import load_run

    run = load_run(out)
    x = np.random.default_rng(1).normal(size=(3, 9, 2)).astype("float32")
    with torch.no_grad():
        y, _ = run.model(torch.from_numpy(x))
    assert float(np.abs(y.numpy() - kmodel.predict(x, verbose=0)).max()) < 1e-5
    inspected = CliRunner().invoke(app, ["inspect", str(out)])
    assert inspected.exit_code == 0 and "lstm" in inspected.output and "gru" in inspected.output

    # the service advances streams on it: the last step's prediction is Keras's
    from hiddenstate.serve.served import ServedModel

    served = ServedModel.build(run.model, None, run.inputs, run.targets)
    start = torch.zeros(3, served.state_width)
    _, preds = served.advance(start, np.ones(3, bool), list(x))
    assert float(np.abs(preds.numpy() - kmodel.predict(x, verbose=0)).max()) < 1e-5

    # fine-tuning with the Trainer from the run: the loss goes down, on every step's target
    series = np.cumsum(np.random.default_rng(2).normal(size=(4, 64, 2)), axis=1).astype("float32") * 0.1
    xs, ys = torch.from_numpy(series[:, :-1]), torch.from_numpy(series[:, 1:])
    batch = hs.Batch(
        x=xs,
        y=ys,
        reset=torch.zeros(4, dtype=torch.bool),
        mask=torch.ones(4, 63, dtype=torch.bool),
        cond=xs[:, 0],
        lanes=tuple((i, 0) for i in range(4)),
    )
    batches = [batch]
    trainer = hs.Trainer(run.model, hs.TrainConfig(epochs=5, lr=1e-2, state_policy="zeros", progress=False))
    before = trainer.evaluate(batches)["loss"]
    trainer.fit(batches)
    assert trainer.evaluate(batches)["loss"] < before


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_cli_damaged_file_one_line(keras_file: tuple[Path, Any], tmp_path: Path, suffix: str) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli.commands import app

    bad = tmp_path / f"bad.{suffix}"
    bad.write_bytes((b"PK\x03\x04" if suffix == "keras" else b"\x89HDF\r\n\x1a\n") + b"\0" * 64)
    result = CliRunner().invoke(app, ["import", "keras", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: not a readable Keras model file"), result.output
    assert not (tmp_path / "run").exists()


def test_serve_an_imported_run(keras_file: tuple[Path, Any], tmp_path: Path) -> None:
    """The service of `hiddenstate serve`, built from the imported run directory and run by a real
    uvicorn server: an observe answers Keras's prediction for the stream's rows (no scaler, so
    original units are the model's)."""
    import httpx
    from typer.testing import CliRunner

    from hiddenstate.cli.commands import app
    from hiddenstate.serve.app import create_app
    from hiddenstate.serve.command import build_service
    from hiddenstate.serve.testing import ThreadServer

    path, kmodel = keras_file
    out = tmp_path / "run"
    assert CliRunner().invoke(app, ["import", "keras", str(path), "--out", str(out)]).exit_code == 0
    rows = np.random.default_rng(5).normal(size=(7, 2)).astype("float32")
    want = kmodel.predict(rows[None], verbose=0)[0]  # (targets,): the last step of the window
    with ThreadServer(create_app(build_service(out))) as server:
        answer = httpx.post(f"{server.url}/v1/streams/s1/observe", json={"seq": 1, "values": rows.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert float(np.abs(np.asarray(answer.json()["prediction"]) - want).max()) < 1e-5


def test_cli_import_with_a_scaler(keras_file: tuple[Path, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hiddenstate.cli.commands import app

    scaler = tmp_path / "scaler.json"
    scaler.write_text(json.dumps({"kind": "standard", "mean": [1.0, 2.0], "std": [2.0, 4.0]}))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["import", "keras", str(keras_file[0]), "--out", str(out), "--scaler", str(scaler)]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "manifest.json").read_text())["scaler"]
    assert saved["mean"] == [1.0, 2.0] and saved["std"] == [2.0, 4.0]
    wrong = CliRunner().invoke(
        app, ["import", "keras", str(keras_file[0]), "--out", str(tmp_path / "r2"), "--inputs", "a"]
    )
    assert wrong.exit_code == 1
    assert wrong.output.strip() == "Error: --inputs: 1 names given for a model with 2 inputs"


def test_rollout_forecast_of_a_last_step_model(keras_file: tuple[Path, Any]) -> None:
    """A return_sequences=False model rolls out: each step's prediction is Keras's prediction for
    the window ending there, fed back as the next input."""
    from hiddenstate.forecast import forecast

    path, kmodel = keras_file
    model = hs.keras.load(path)
    history = np.random.default_rng(6).normal(size=(2, 8, 2)).astype("float32")
    got = forecast(model, history, 3, method="rollout")  # (batch, horizon, targets)
    window = history
    for step in range(3):
        want = kmodel.predict(window, verbose=0)  # (batch, targets)
        assert float(np.abs(np.asarray(got[:, step]) - want).max()) < 1e-5, step
        window = np.concatenate([window, want[:, None].astype("float32")], axis=1)

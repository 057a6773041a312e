"""A model imported from Keras exports to ONNX with Keras's own numbers, chained over chunks."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("h5py", reason="h5py is in the keras extra: pip install -e '.[dev]'")
pytest.importorskip("keras", reason="keras is in the keras extra: pip install -e '.[dev]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[dev]'")

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

import hiddenstate as hs  # noqa: E402


def _keras_model(return_sequences: bool, use_bias: bool) -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(None, 2)),
            keras.layers.LSTM(8, return_sequences=True, use_bias=use_bias),
            keras.layers.GRU(5, return_sequences=return_sequences),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(3)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    return model


@pytest.mark.parametrize(("return_sequences", "use_bias"), [(True, True), (False, False)])
def test_an_imported_keras_model_exports_with_kerass_numbers(
    tmp_path: Path, return_sequences: bool, use_bias: bool
) -> None:
    k_model = _keras_model(return_sequences, use_bias)
    k_model.save(tmp_path / "m.keras")
    model = hs.keras.load(tmp_path / "m.keras")
    report = hs.export_onnx(model, tmp_path / "m.onnx")
    assert report.worst < 1e-5

    x = np.random.default_rng(4).standard_normal((3, 20, 2)).astype(np.float32)
    want = np.asarray(k_model.predict(x, verbose=0))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = model.state_spec.names
    sizes = [s for layer in model.state_spec.state_size for s in layer]
    state = {f"state_in.{n}": np.full((3, h), np.nan, np.float32) for n, h in zip(names, sizes, strict=True)}
    ys = []
    for k, (a, b) in enumerate([(0, 7), (7, 8), (8, 20)]):  # three chunks chained through the state
        feeds = {"x": x[:, a:b], "reset": np.full(3, k == 0), **state}
        out = session.run(None, feeds)
        got = dict(zip([o.name for o in session.get_outputs()], out, strict=True))
        ys.append(got["y"])
        state = {f"state_in.{n}": got[f"state_out.{n}"] for n in names}
    y = np.concatenate(ys, axis=1) if return_sequences else ys[-1]
    assert y.shape == want.shape
    assert float(np.abs(y - want).max()) < 1e-5

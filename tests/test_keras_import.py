"""hs.keras.load: Keras models read with h5py only give Keras's own predictions (to 1e-5)."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="h5py is in the keras extra: pip install -e '.[dev]'")
pytest.importorskip("keras", reason="keras is in the keras extra: pip install -e '.[dev]'")

# Keras's torch backend calls np.array(tensor) the way numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

import hiddenstate as hs  # noqa: E402

# -- real Keras models: random weights, saved by Keras itself --------------------------------------


def keras() -> Any:
    import keras as k

    assert k.backend.backend() == "torch", "KERAS_BACKEND=torch must be set before keras is imported"
    return k


def randomize(model: Any, seed: int = 0, scale: float = 0.5) -> Any:
    """Every weight drawn from N(0, scale): no zero biases, so a lost bias shows."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale, tuple(w.shape)).astype("float32"))
    return model


def seed_model() -> Any:
    """The seed user's model, exactly."""
    k = keras()
    return k.Sequential(
        [
            k.Input(batch_shape=(10, 96, 2)),
            k.layers.LSTM(8, stateful=True, return_sequences=True),
            k.layers.LSTM(8, return_sequences=True),
            k.layers.Dropout(0.2),
            k.layers.TimeDistributed(k.layers.Dense(2, activation="softmax")),
        ]
    )


def save_both(model: Any, directory: Path, name: str) -> tuple[Path, Path]:
    """``name.keras`` and ``name.h5``, both written by Keras."""
    import warnings

    keras_path, h5_path = directory / f"{name}.keras", directory / f"{name}.h5"
    model.save(keras_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras notes that HDF5 is its legacy format
        model.save(h5_path)
    return keras_path, h5_path


def inputs(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


TOL = 1e-5
MAX_DIFF: dict[str, float] = {}  # the largest difference per case, printed at the end (pytest -s)


def _diff(case: str, ours: torch.Tensor | np.ndarray, theirs: Any) -> float:
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else ours
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, (case, ours.shape, theirs.shape)
    d = float(np.abs(ours - theirs).max())
    MAX_DIFF[case] = max(d, MAX_DIFF.get(case, 0.0))
    assert d < TOL, f"{case}: max |ours - keras| = {d:.3g}"
    return d


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    print("\nlargest |hiddenstate - keras.predict| per case:")
    for case, d in sorted(MAX_DIFF.items()):
        print(f"  {case:40s} {d:.3g}")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras")


# -- the seed model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed(tmp: Path) -> dict[str, Any]:
    model = randomize(seed_model(), seed=0)
    keras_path, h5_path = save_both(model, tmp, "seed")
    xs = [inputs((10, 96, 2), seed=s) for s in range(3)]
    model.layers[0].reset_state()
    preds = [model.predict(x, batch_size=10, verbose=0) for x in xs]  # the stateful layer carries on
    return {"keras": keras_path, "h5": h5_path, "xs": xs, "preds": preds}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_seed_model_config(seed: dict[str, Any], fmt: str) -> None:
    m = hs.keras.load(seed[fmt])
    assert isinstance(m, hs.SequenceModel)
    assert m.state_spec == hs.StateSpec([("lstm", 8), ("lstm", 8)])
    assert (m.input_size, m.output_size, m.head_activation) == (2, 2, "softmax")
    assert (m.stateful, m.batch_size, m.return_sequences) == (True, 10, True)
    assert m.head_dropout is not None and m.head_dropout.p == pytest.approx(0.2)  # the Dropout before the head


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_seed_model_over_batches(seed: dict[str, Any], fmt: str) -> None:
    """Keras carries the stateful first LSTM across predict calls and restarts the second from
    zeros; carrying layer 0's state explicitly gives Keras's numbers batch after batch."""
    m = hs.keras.load(seed[fmt])
    state = None
    with torch.no_grad():
        for i, (x, want) in enumerate(zip(seed["xs"], seed["preds"], strict=True)):
            y, state = m(torch.from_numpy(x), state)
            _diff(f"seed model {fmt} batch {i}", y, want)
            state = state.replace(1, h=torch.zeros(10, 8), c=torch.zeros(10, 8))  # layer 1 is not stateful


def test_seed_model_fresh_batches_differ(seed: dict[str, Any]) -> None:
    """The carry matters: a fresh state for batch 1 does not give Keras's batch-1 numbers."""
    m = hs.keras.load(seed["keras"])
    with torch.no_grad():
        y, _ = m(torch.from_numpy(seed["xs"][1]))
    assert np.abs(y.numpy() - seed["preds"][1]).max() > 1e-3


# -- every cell kind, mixed sizes, heads, options -----------------------------------------------


def _cases() -> dict[str, Any]:
    k = keras()
    layers = k.layers
    return {
        "gru rnn lstm mixed sizes, dense stack": lambda: k.Sequential(
            [
                k.Input(shape=(None, 3)),
                layers.GRU(5, return_sequences=True),
                layers.Dropout(0.1),
                layers.SimpleRNN(3, return_sequences=True),
                layers.Dropout(0.1),
                layers.LSTM(7, return_sequences=True),
                layers.Dense(6, activation="tanh"),
                layers.TimeDistributed(layers.Dense(4, activation="relu")),
                layers.Dense(3, activation="sigmoid"),
            ]
        ),
        "return_sequences=False, dense head": lambda: k.Sequential(
            [
                k.Input(shape=(None, 2)),
                layers.LSTM(6, return_sequences=True),
                layers.GRU(4, return_sequences=False),
                layers.Dropout(0.3),
                layers.Dense(5, activation="relu"),
                layers.Dense(2),
            ]
        ),
        "use_bias=False everywhere": lambda: k.Sequential(
            [
                k.Input(shape=(None, 2)),
                layers.LSTM(4, use_bias=False, return_sequences=True),
                layers.GRU(3, use_bias=False, return_sequences=True),
                layers.SimpleRNN(5, use_bias=False, return_sequences=True),
                layers.Dense(2, use_bias=False, activation="linear"),
            ]
        ),
        "mixed use_bias, no head": lambda: k.Sequential(
            [
                k.Input(shape=(None, 2)),
                layers.GRU(4, return_sequences=True),
                layers.GRU(4, use_bias=False, return_sequences=True),
                layers.SimpleRNN(3),
            ]
        ),
        "functional linear chain": lambda: _functional(k),
    }


def _functional(k: Any) -> Any:
    x = k.Input(shape=(None, 2))
    h = k.layers.LSTM(5, return_sequences=True)(x)
    h = k.layers.SimpleRNN(4, return_sequences=True)(h)
    y = k.layers.Dense(3, activation="softmax")(h)
    return k.Model(x, y)


CASES = list(_cases())


@pytest.fixture(scope="module")
def built(tmp: Path) -> dict[str, Any]:
    out = {}
    for i, (name, make) in enumerate(_cases().items()):
        model = randomize(make(), seed=10 + i)
        n_in = model.inputs[0].shape[-1]
        x = inputs((4, 17, n_in), seed=20 + i)
        out[name] = (save_both(model, tmp, f"case{i}"), x, model.predict(x, verbose=0))
    return out


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("case", CASES)
def test_predictions_equal_keras(built: dict[str, Any], case: str, fmt: str) -> None:
    (keras_path, h5_path), x, want = built[case]
    m = hs.keras.load(keras_path if fmt == "keras" else h5_path)
    with torch.no_grad():
        y, _ = m(torch.from_numpy(x))
    _diff(f"{case} ({fmt})", y, want)
    assert y.shape == want.shape


def test_options_recorded(built: dict[str, Any]) -> None:
    stack = hs.keras.load(built["gru rnn lstm mixed sizes, dense stack"][0][0])
    assert stack.rnn.dropout is not None and stack.rnn.dropout.p == pytest.approx(0.1)  # between recurrent layers
    assert stack.dense_sizes == [(6, "tanh", True), (4, "relu", True)] and stack.head_activation == "sigmoid"
    m = hs.keras.load(built["return_sequences=False, dense head"][0][0])
    assert (m.return_sequences, m.stateful, m.batch_size) == (False, False, None)
    assert m.dense_sizes == [(5, "relu", True)] and m.head.bias is not None
    assert m.head_dropout is not None and m.head_dropout.p == pytest.approx(0.3)
    nb = hs.keras.load(built["use_bias=False everywhere"][0][0])
    assert nb.rnn.bias == (False, False, False) and nb.head.bias is None
    assert not any("bias" in name for name, _ in nb.named_parameters())
    mixed = hs.keras.load(built["mixed use_bias, no head"][0][0])
    assert mixed.rnn.bias == (True, False, True)
    # config round trip through build_model: same numbers
    again = hs.build_model(json.loads(json.dumps(mixed.config())))
    again.load_state_dict(mixed.state_dict())
    x = torch.randn(2, 5, 2)
    assert torch.equal(again(x)[0], mixed(x)[0])


def test_last_step_model_gives_every_step_on_request(built: dict[str, Any]) -> None:
    (path, _), x, want = built["return_sequences=False, dense head"]
    m = hs.keras.load(path)
    with torch.no_grad():
        steps, _ = m(torch.from_numpy(x), sequences=True)  # (batch, steps, out)
    assert steps.shape == (4, 17, 2)
    _diff("return_sequences=False, sequences=True last step", steps[:, -1], want)


# -- a stateful model over consecutive batches ---------------------------------------------------


@pytest.fixture(scope="module")
def stateful(tmp: Path) -> dict[str, Any]:
    k = keras()
    model = k.Sequential(
        [
            k.Input(batch_shape=(6, 12, 3)),
            k.layers.LSTM(5, stateful=True, return_sequences=True),
            k.layers.GRU(7, stateful=True, return_sequences=True),
            k.layers.SimpleRNN(4, stateful=True, return_sequences=True),
            k.layers.TimeDistributed(k.layers.Dense(2)),
        ]
    )
    randomize(model, seed=5)
    keras_path, h5_path = save_both(model, tmp, "stateful")
    xs = [inputs((6, 12, 3), seed=30 + s) for s in range(4)]
    for layer in model.layers[:3]:
        layer.reset_state()
    preds = [model.predict(x, batch_size=6, verbose=0) for x in xs]
    return {"keras": keras_path, "h5": h5_path, "xs": xs, "preds": preds}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_stateful_explicit_carry(stateful: dict[str, Any], fmt: str) -> None:
    m = hs.keras.load(stateful[fmt])
    state = None
    with torch.no_grad():
        for x, want in zip(stateful["xs"], stateful["preds"], strict=True):
            y, state = m(torch.from_numpy(x), state)
            _diff(f"stateful lstm/gru/rnn explicit ({fmt})", y, want)


def test_stateful_by_hs_stateful(stateful: dict[str, Any]) -> None:
    m = hs.keras.load(stateful["keras"])
    carried = hs.Stateful(m, batch_size=m.batch_size)
    with torch.no_grad():
        for x, want in zip(stateful["xs"], stateful["preds"], strict=True):
            _diff("stateful lstm/gru/rnn by hs.Stateful", carried(torch.from_numpy(x)), want)


# -- tf.keras 2.13-2.15 legacy .h5, written by hand in that layout ------------------------------


def _tf_keras_h5(model: Any, path: Path) -> None:
    """The layout tf.keras 2.13-2.15 ``model.save("m.h5")`` writes: ``model_config`` in Keras 2's
    config format, ``model_weights/<layer>/<layer>/<cell>/kernel:0`` and ``weight_names``."""
    import h5py

    layers = [
        {
            "class_name": "InputLayer",
            "config": {"batch_input_shape": [None, None, 2], "dtype": "float32", "name": "input_1"},
        }
    ]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        group = f.create_group("model_weights")
        names = []
        for layer in model.layers:
            cls = type(layer).__name__
            cfg: dict[str, Any] = {"name": layer.name, "trainable": True, "dtype": "float32"}
            if cls in ("LSTM", "GRU"):
                cfg.update(
                    units=layer.units,
                    activation="tanh",
                    recurrent_activation="sigmoid",
                    use_bias=True,
                    return_sequences=layer.return_sequences,
                    return_state=False,
                    go_backwards=False,
                    stateful=False,
                    unroll=False,
                    time_major=False,
                    dropout=0.0,
                    recurrent_dropout=0.0,
                    implementation=2,
                )
                if cls == "GRU":
                    cfg["reset_after"] = True
                cell = f"{cls.lower()}_cell"
                weights = {
                    f"{layer.name}/{cell}/{n}:0": v
                    for n, v in zip(("kernel", "recurrent_kernel", "bias"), layer.get_weights(), strict=True)
                }
            else:
                cfg.update(units=layer.units, activation=layer.get_config()["activation"], use_bias=True)
                weights = {
                    f"{layer.name}/{n}:0": v for n, v in zip(("kernel", "bias"), layer.get_weights(), strict=True)
                }
            layers.append({"class_name": cls, "config": cfg})
            g = group.create_group(layer.name)
            g.attrs["weight_names"] = [n.encode() for n in weights]
            for n, v in weights.items():
                g.create_dataset(n, data=v)
            names.append(layer.name.encode())
        group.attrs["layer_names"] = names
        group.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(
            {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
        )


def _tf_keras_archive(model: Any, h5_path: Path, path: Path) -> None:
    """The layout tf.keras 2.13-2.15 ``model.save("m.keras")`` writes, as Keras 3's loader expects it
    (its 2.13 fallback maps ``layers/`` to ``_layer_checkpoint_dependencies/``): the Keras 2 config,
    and the variables at ``_layer_checkpoint_dependencies/<class path>/cell/vars/<i>`` with no
    ``name`` attributes, so the weights are found by the class-name paths alone."""
    import io
    import zipfile

    import h5py

    with h5py.File(h5_path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        seen: dict[str, int] = {}
        for layer in model.layers:
            base = _snake(type(layer).__name__)
            key = base + (f"_{seen[base]}" if base in seen else "")
            seen[base] = seen.get(base, 0) + 1
            where = f"_layer_checkpoint_dependencies/{key}" + ("/cell" if hasattr(layer, "cell") else "")
            group = f.create_group(f"{where}/vars")
            for i, v in enumerate(layer.get_weights()):
                group.create_dataset(str(i), data=v)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
        archive.writestr("model.weights.h5", buffer.getvalue())


def _snake(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_tf_keras_2_layouts(tmp: Path, fmt: str) -> None:
    k = keras()
    model = randomize(
        k.Sequential(
            [
                k.Input(shape=(None, 2)),
                k.layers.LSTM(6, return_sequences=True),
                k.layers.GRU(4, return_sequences=True),
                k.layers.Dense(5, activation="tanh"),
                k.layers.Dense(3, activation="softmax"),
            ]
        ),
        seed=7,
    )
    path = tmp / "tf_keras_2_15.h5"
    _tf_keras_h5(model, path)
    if fmt == "keras":
        _tf_keras_archive(model, path, tmp / "tf_keras_2_15.keras")
        path = tmp / "tf_keras_2_15.keras"
    x = inputs((3, 11, 2), seed=8)
    m = hs.keras.load(path)
    with torch.no_grad():
        _diff(f"tf.keras 2.15 .{fmt} layout", m(torch.from_numpy(x))[0], model.predict(x, verbose=0))


# -- refusals ------------------------------------------------------------------------------------


def _refusal_models() -> list[tuple[str, Any, str]]:
    k = keras()
    layers = k.layers

    def seq(*stack: Any, shape: tuple[int, ...] = (None, 2)) -> Any:
        return k.Sequential([k.Input(shape=shape), *stack])

    return [
        (
            "gru_reset_before",
            lambda: seq(layers.GRU(4, reset_after=False, name="g")),
            "Keras layer 'g': reset_after=False is not supported: torch's GRU applies the reset gate after the "
            "recurrent matmul (reset_after=True)",
        ),
        (
            "relu_lstm",
            lambda: seq(layers.LSTM(4, activation="relu", name="l")),
            "Keras layer 'l': activation='relu' is not supported: torch's LSTM, GRU and RNN cells use tanh",
        ),
        (
            "hard_sigmoid",
            lambda: seq(layers.LSTM(4, recurrent_activation="hard_sigmoid", name="l")),
            "Keras layer 'l': recurrent_activation='hard_sigmoid' is not supported: torch's gates use the exact "
            "sigmoid (Keras 2's default hard_sigmoid is a piecewise-linear approximation)",
        ),
        (
            "masking",
            lambda: seq(layers.Masking(name="m"), layers.LSTM(4)),
            "Keras layer 'm': a Masking layer is not supported: skipping masked steps is not part of a hiddenstate "
            "stack; drop the mask and the padding",
        ),
        (
            "backwards",
            lambda: seq(layers.LSTM(4, go_backwards=True, name="l")),
            "Keras layer 'l': go_backwards=True is not supported: a reversed pass cannot carry its state on to the "
            "next chunk",
        ),
        (
            "bidirectional",
            lambda: seq(layers.Bidirectional(layers.LSTM(4), name="b")),
            "Keras layer 'b': a Bidirectional layer is not supported: a backward pass over the sequence cannot "
            "carry a state from one call to the next",
        ),
        (
            "lambda",
            lambda: seq(layers.LSTM(4), layers.Lambda(lambda t: t * 2, name="double")),
            "Keras layer 'double': a Lambda layer is not supported: its Python code is never loaded or run here",
        ),
        (
            "conv",
            lambda: seq(layers.Conv1D(3, 2, name="conv"), layers.LSTM(4)),
            "Keras layer 'conv': a Conv1D layer is not supported: expected InputLayer, LSTM, GRU, SimpleRNN, "
            "Dropout, Dense or TimeDistributed(Dense)",
        ),
        (
            "gelu_dense",
            lambda: seq(layers.LSTM(4), layers.Dense(2, activation="gelu", name="d")),
            "Keras layer 'd': activation='gelu' is not supported: expected one of linear, tanh, sigmoid, relu, softmax",
        ),
    ]


REFUSALS = _refusal_models()


@pytest.mark.parametrize(("case", "make", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_refusals(tmp: Path, case: str, make: Any, message: str, fmt: str) -> None:
    path = tmp / f"refuse_{case}.{fmt}"
    if not path.exists():
        save_both(make(), tmp, f"refuse_{case}")
    with pytest.raises(hs.ConfigError, match=f"^{re.escape(message)}$"):
        hs.keras.load(path)


@pytest.fixture(scope="module")
def custom_layer_file(tmp: Path) -> Path:
    k = keras()

    @k.saving.register_keras_serializable(package="mine")
    class Twice(k.layers.Layer):
        def call(self, t: Any) -> Any:
            return t * 2

    model = k.Sequential([k.Input(shape=(None, 2)), k.layers.LSTM(4), Twice(name="twice")])
    path = tmp / "custom.keras"
    model.save(path)
    return path


def test_refuses_custom_layer(custom_layer_file: Path) -> None:
    message = (
        "Keras layer 'twice': the custom layer class 'Twice' is not supported: only Keras's own layers can be "
        "read without running code"
    )
    with pytest.raises(hs.ConfigError, match=f"^{re.escape(message)}$"):
        hs.keras.load(custom_layer_file)


def test_recurrent_dropout_warns(tmp: Path) -> None:
    k = keras()
    model = randomize(
        k.Sequential([k.Input(shape=(None, 2)), k.layers.LSTM(4, recurrent_dropout=0.25, name="l"), k.layers.Dense(1)])
    )
    path = tmp / "recurrent_dropout.keras"
    model.save(path)
    message = (
        "Keras layer 'l': recurrent_dropout=0.25 is training-only and is not carried over (predictions are unaffected)"
    )
    with pytest.warns(UserWarning, match=f"^{re.escape(message)}$"):
        m = hs.keras.load(path)
    x = inputs((2, 9, 2))
    with torch.no_grad():
        _diff("recurrent_dropout (warned)", m(torch.from_numpy(x))[0], model.predict(x, verbose=0))


# -- damaged files -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_truncated_file(seed: dict[str, Any], tmp: Path, fmt: str) -> None:
    data = Path(seed[fmt]).read_bytes()
    path = tmp / f"truncated.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(hs.CheckpointError, match=f"^{re.escape(str(path))}: not a readable Keras model file"):
        hs.keras.load(path)


def test_corrupt_weights_inside_archive(seed: dict[str, Any], tmp: Path) -> None:
    import zipfile

    path = tmp / "bad_weights.keras"
    with zipfile.ZipFile(seed["keras"]) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[:100] if item == "model.weights.h5" else data)
    with pytest.raises(
        hs.CheckpointError, match=f"^{re.escape(str(path))}: not a readable Keras model file \\(model.weights.h5: "
    ):
        hs.keras.load(path)


def test_wrong_weight_shape(seed: dict[str, Any], tmp: Path) -> None:
    import shutil

    import h5py

    path = tmp / "wrong_shape.h5"
    shutil.copy(seed["h5"], path)
    with h5py.File(path, "a") as f:
        # Keras numbers auto-named layers per process (lstm, lstm_1, ...): take the file's own name
        layer = sorted(n for n in f["model_weights"] if n.startswith("lstm"))[-1]
        group = f["model_weights"][layer]
        name = next(
            n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"] if "recurrent" in str(n)
        )
        del group[name]
        group.create_dataset(name, data=np.zeros((8, 16), np.float32))
    message = f"{path}: Keras layer '{layer}' weight 'recurrent_kernel': expected shape (8, 32), got (8, 16)"
    with pytest.raises(hs.CheckpointError, match=f"^{re.escape(message)}$"):
        hs.keras.load(path)


def _rewritten(src: Path, dst: Path, edit: Any, member: str = "config.json") -> Path:
    """A copy of the .keras file ``src`` with ``member``'s JSON passed through ``edit``."""
    import zipfile

    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for item in a.namelist():
            data = a.read(item)
            b.writestr(item, json.dumps(edit(json.loads(data))) if item == member else data)
    return dst


def _first_lstm(config: dict[str, Any]) -> dict[str, Any]:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "LSTM")["config"]


def test_absurd_units_are_refused_by_the_weights_before_any_allocation(
    seed: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20 KB file naming 10**9 units must not make torch allocate 48 GB first."""
    from hiddenstate.interop.keras import convert

    def edit(c: dict[str, Any]) -> dict[str, Any]:
        _first_lstm(c)["units"] = 10**9
        return c

    path = _rewritten(seed["keras"], tmp / "huge.keras", edit)
    built = []
    real = convert.SequenceModel
    monkeypatch.setattr(convert, "SequenceModel", lambda *a, **kw: built.append(a) or real(*a, **kw))
    with pytest.raises(hs.CheckpointError, match=r"weight 'kernel': expected shape \(2, 4000000000\), got \(2, 32\)$"):
        hs.keras.load(path)
    assert built == []  # refused before any model was built
    hs.keras.load(seed["keras"])
    assert len(built) == 1  # guards the line above: the spy does see a build


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c | {"config": [1, 2]}, "not a readable Keras model file (config.json holds no model config)"),
        (
            lambda c: {**c, "config": {**c["config"], "layers": 7}},
            "not a readable Keras model file (config.json: 'layers' is not a list)",
        ),
        (lambda c: (_first_lstm(c).pop("units"), c)[1], "config.json is malformed (KeyError: 'units')"),
    ],
    ids=["config-not-an-object", "layers-not-a-list", "units-missing"],
)
def test_a_malformed_config_is_a_checkpoint_error(seed: dict[str, Any], tmp: Path, edit: Any, message: str) -> None:
    path = _rewritten(seed["keras"], tmp / "malformed.keras", edit)
    with pytest.raises(hs.CheckpointError, match=f"^{re.escape(str(path))}: {re.escape(message)}$"):
        hs.keras.load(path)


def test_metadata_that_is_not_an_object_is_refused(seed: dict[str, Any], tmp: Path) -> None:
    path = _rewritten(seed["keras"], tmp / "meta.keras", lambda m: [1], member="metadata.json")
    with pytest.raises(hs.CheckpointError, match=re.escape("(metadata.json is not an object)")):
        hs.keras.load(path)


def test_functional_models_with_other_outputs_or_branches_are_refused(tmp: Path) -> None:
    k = keras()
    layers = k.layers
    i = k.Input(shape=(None, 3), name="x")
    h = layers.LSTM(8, return_sequences=True, name="l")(i)
    d1 = layers.Dense(4, name="d1")(h)
    d2 = layers.Dense(2, name="d2")(d1)
    cases = {
        "two_outputs": (
            k.Model(i, [d1, d2]),
            "a model with 2 outputs ['d1', 'd2'] is not supported; expected one output",
        ),
        "early_output": (
            k.Model(i, h),  # the Dense layers are not part of this model: the output is the LSTM, its last layer
            None,
        ),
        "merge": (
            k.Model(i, layers.Add(name="add")([h, layers.LSTM(8, return_sequences=True, name="l2")(h)])),
            "Keras layer 'add': 2 inputs is not supported: only a straight chain of layers (each fed by one)",
        ),
    }
    for name, (model, message) in cases.items():
        path = tmp / f"{name}.keras"
        model.save(path)
        if message is None:
            assert hs.keras.load(path).output_size == 8
            continue
        with pytest.raises(hs.ConfigError) as e:
            hs.keras.load(path)
        assert str(e.value).endswith(message), str(e.value)


def test_not_a_keras_file(tmp: Path) -> None:
    path = tmp / "notes.keras"
    path.write_text("hello")
    with pytest.raises(hs.CheckpointError, match=re.escape(f"{path}: not a readable Keras model file (neither")):
        hs.keras.load(path)
    with pytest.raises(hs.CheckpointError, match=re.escape(f"{tmp / 'missing.keras'}: Keras model file not found")):
        hs.keras.load(tmp / "missing.keras")


# -- no Keras needed, no Keras code run --------------------------------------------------------------


def test_reads_without_keras_installed(seed: dict[str, Any]) -> None:
    """In a fresh interpreter where `import keras` fails, both files still load, to Keras's numbers."""
    import subprocess
    import sys

    np.save(seed["keras"].with_suffix(".x.npy"), seed["xs"][0])
    np.save(seed["keras"].with_suffix(".y.npy"), seed["preds"][0])
    code = f"""
import sys
sys.modules["keras"] = None  # import keras raises ImportError
import numpy as np, torch, hiddenstate as hs
assert "h5py" not in sys.modules and "hiddenstate.interop" not in sys.modules  # import hiddenstate is light
x, want = np.load({str(seed["keras"].with_suffix(".x.npy"))!r}), np.load({str(seed["keras"].with_suffix(".y.npy"))!r})
for path in ({str(seed["keras"])!r}, {str(seed["h5"])!r}):
    with torch.no_grad():
        y, _ = hs.keras.load(path)(torch.from_numpy(x))
    assert float(np.abs(y.numpy() - want).max()) < 1e-5, path
print("ok", "keras" in sys.modules and sys.modules["keras"] is None)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok True"


def test_service_advances_the_seed_model(seed: dict[str, Any]) -> None:
    """The streaming service (which runs an all-LSTM stack on its fused kernel) gives Keras's last
    step of the first batch for ten fresh streams."""
    from hiddenstate.serve.served import ServedModel

    served = ServedModel.build(hs.keras.load(seed["keras"]), None, ["a", "b"], ["p", "q"])
    _, preds = served.advance(torch.zeros(10, served.state_width), np.ones(10, bool), list(seed["xs"][0]))
    _diff("seed model through the service (last step)", preds, seed["preds"][0][:, -1])

"""hs.keras.get_state/set_state/reset_state/check_state on a live Keras 3 model (torch backend)."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

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


def _seed_model() -> Any:
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(10, 96, 2)),
            keras.layers.LSTM(8, stateful=True, return_sequences=True),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.Dropout(0.2),
            keras.layers.TimeDistributed(keras.layers.Dense(2, activation="softmax")),
        ]
    )
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("live") / "seed.keras"
    _seed_model().save(path)
    return path


@pytest.fixture
def model(saved: Path) -> Any:
    m = keras.saving.load_model(saved)
    m.layers[0].reset_state()
    return m


def _h_c(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(10, 8)).astype("float32"), rng.normal(size=(10, 8)).astype("float32")


def test_wrong_shape_refused_with_the_message(model: Any) -> None:
    message = "layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (10, 2)"
    before = keras.ops.convert_to_numpy(model.layers[0].states[0].value).copy()
    with pytest.raises(hs.StateError, match=f"^{re.escape(message)}$"):
        hs.keras.set_state(model, layer=0, h=np.zeros((10, 2), np.float32))
    with pytest.raises(hs.StateError, match=re.escape("layer 0 (lstm, hidden 8) `c`: expected shape (batch=10")):
        hs.keras.set_state(model, layer=0, h=np.zeros((10, 8), np.float32), c=torch.zeros(9, 8))
    # nothing was written: the h given with the bad c did not land either
    assert np.array_equal(keras.ops.convert_to_numpy(model.layers[0].states[0].value), before)
    # the seed model's layer 1 is not stateful: the message lists the layers that are, by Keras name
    numbered = f"(the stateful layers 0: {model.layers[0].name!r}), got 1"
    with pytest.raises(hs.StateError, match=f"^{re.escape('set_state: layer must be an int in 0..0 ' + numbered)}$"):
        hs.keras.set_state(model, layer=1, h=np.zeros((10, 8)))
    # no hint at an option set_state does not have, and the value's kind named
    with pytest.raises(
        hs.StateError, match=r"^layer 0 \(lstm, hidden 8\) `h`: expected shape \(batch=10, hidden=8\), got \(8,\)$"
    ):
        hs.keras.set_state(model, layer=0, h=np.zeros(8), c=np.zeros((10, 8)))
    not_real = {"<U3": "abc", "complex128": np.full((10, 8), 1 + 2j), "bool": torch.ones(10, 8, dtype=torch.bool)}
    for shown, value in not_real.items():  # a complex value would lose its imaginary part in a cast
        message = f"layer 0 (lstm, hidden 8) `h`: expected an array of real numbers, got {shown} array"
        with pytest.raises(hs.StateError, match=f"^{re.escape(message)}$"):
            hs.keras.set_state(model, layer=0, h=value, c=np.zeros((10, 8)))
    assert np.array_equal(keras.ops.convert_to_numpy(model.layers[0].states[0].value), before)


def test_set_state_then_predict_equals_imported_model(model: Any, saved: Path) -> None:
    h, c = _h_c(1)
    variables = list(model.layers[0].states)
    hs.keras.set_state(model, layer=0, h=h, c=torch.from_numpy(c))  # numpy and torch values
    assert all(a is b for a, b in zip(model.layers[0].states, variables, strict=True))  # assigned, not rebound
    x = np.random.default_rng(2).normal(size=(10, 96, 2)).astype("float32")
    want = model.predict(x, batch_size=10, verbose=0)
    ours = hs.keras.load(saved)
    state = hs.State.zeros(ours.state_spec, 10).replace(0, h=torch.from_numpy(h), c=torch.from_numpy(c))
    with torch.no_grad():
        y, after = ours(torch.from_numpy(x), state)
    assert float(np.abs(y.numpy() - want).max()) < 1e-5
    # Keras carried layer 0 on; get_state reads the same values as our state after the batch
    got = hs.keras.get_state(model)
    assert got.spec == hs.StateSpec([("lstm", 8)])
    assert float((got.layers[0].h - after.layers[0].h).abs().max()) < 1e-5
    assert float((got.layers[0].c - after.layers[0].c).abs().max()) < 1e-5


def test_set_whole_state_and_keras_tensors(model: Any) -> None:
    h, c = _h_c(3)
    spec = hs.StateSpec([("lstm", 8)])
    hs.keras.set_state(model, hs.State.from_tensors(spec, [(torch.from_numpy(h), torch.from_numpy(c))]))
    assert np.allclose(hs.keras.get_state(model).layers[0].h.numpy(), h)
    hs.keras.set_state(model, layer=0, c=keras.ops.convert_to_tensor(h))  # a Keras tensor
    assert np.allclose(hs.keras.get_state(model).layers[0].c.numpy(), h)
    with pytest.raises(hs.StateError, match=re.escape("set_state: expected a State of spec [lstm 8], got [gru 8]")):
        hs.keras.set_state(model, hs.State.zeros(hs.StateSpec([("gru", 8)]), 10))


def test_reset_state_mask_zeros_only_masked_rows(model: Any) -> None:
    h, c = _h_c(4)
    hs.keras.set_state(model, layer=0, h=h, c=c)
    mask = np.zeros(10, bool)
    mask[[1, 7]] = True
    hs.keras.reset_state(model, mask)
    got = hs.keras.get_state(model).layers[0]
    assert np.all(got.h.numpy()[mask] == 0) and np.all(got.c.numpy()[mask] == 0)
    assert np.array_equal(got.h.numpy()[~mask], h[~mask]) and np.array_equal(got.c.numpy()[~mask], c[~mask])
    with pytest.raises(
        hs.ShapeError, match=re.escape("reset mask: expected a boolean array of shape (batch=10,), got bool (9,)")
    ):
        hs.keras.reset_state(model, np.zeros(9, bool))
    hs.keras.reset_state(model)
    assert float(hs.keras.get_state(model).layers[0].h.abs().max()) == 0.0


def test_check_state_catches_the_seed_bug(model: Any) -> None:
    hs.keras.check_state(model)  # fine as built
    model.layers[0].states[0] = keras.Variable(np.zeros((10, 2), np.float32))  # the seed's rebind
    message = (
        "layer 0 (lstm, hidden 8) `h`: Keras layer 'lstm' states[0] was rebound to 'variable', which the layer "
        "did not make; the layer reads and assigns its own Variables, so write states with hs.keras.set_state "
        "(it assigns in place), never layer.states[0] = ..."
    )
    name = model.layers[0].name
    with pytest.raises(hs.StateError, match=f"^{re.escape(message.replace(chr(39) + 'lstm' + chr(39), repr(name)))}$"):
        hs.keras.check_state(model)
    with pytest.raises(hs.StateError, match="was rebound"):  # set_state checks first and writes nothing
        hs.keras.set_state(model, layer=0, h=np.zeros((10, 8)))


def test_check_state_catches_a_same_shaped_rebind(model: Any) -> None:
    hs.keras.check_state(model)  # records the layer's own Variables
    model.layers[0].states[1] = keras.Variable(np.zeros((10, 8), np.float32))
    with pytest.raises(hs.StateError, match=re.escape("`c`: Keras layer") + ".*" + re.escape("states[1] was rebound")):
        hs.keras.check_state(model)


def test_no_stateful_layer() -> None:
    m = keras.Sequential([keras.Input(shape=(None, 2)), keras.layers.GRU(3, name="g")])
    with pytest.raises(hs.ConfigError, match="has no stateful recurrent layer"):
        hs.keras.get_state(m)


def test_stateful_layers_inside_a_wrapper_or_a_nested_model_are_named() -> None:
    # not "has no stateful recurrent layer; build them with stateful=True": they are stateful
    bidirectional = keras.Sequential(
        [
            keras.Input(batch_shape=(10, 5, 2)),
            keras.layers.Bidirectional(keras.layers.LSTM(8, stateful=True, return_sequences=True), name="bi"),
        ]
    )
    with pytest.raises(
        hs.ConfigError,
        match="^"
        + re.escape(
            "Keras layer 'bi' (Bidirectional) is or holds a stateful recurrent layer that hs.keras does not reach: "
            "it reads and writes the model's own LSTM/GRU/SimpleRNN layers only"
        )
        + "$",
    ):
        hs.keras.get_state(bidirectional)
    inner = _seed_model()
    inputs = keras.Input(batch_shape=(10, 96, 2))
    outer = keras.Model(inputs, inner(inputs))
    with pytest.raises(hs.ConfigError, match=re.escape(f"; pass the inner model {inner.name!r} itself") + "$"):
        hs.keras.set_state(outer, layer=0, h=np.zeros((10, 8)))
    hs.keras.set_state(inner, layer=0, h=np.ones((10, 8)))  # the inner model itself works
    assert float(hs.keras.get_state(inner).layers[0].h.min()) == 1.0


def test_states_set_before_every_training_minibatch() -> None:
    # The seed user's loop on the torch backend: use_cudnn=False, as docs/keras.md says (Keras 3.15.1)
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(10, 8, 2)),
            keras.layers.LSTM(8, stateful=True, return_sequences=True, use_cudnn=False),
            keras.layers.LSTM(8, stateful=True, return_sequences=True, use_cudnn=False),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(5)
    series = rng.normal(size=(10, 3 * 8 + 2, 2)).astype("float32")
    projection = rng.normal(size=(2, 8)).astype("float32")  # the user's own map from 2 values to 8
    for start in range(1, 3 * 8, 8):
        previous = series[:, start - 1] @ projection  # (batch, 8), from the previous true values
        for i in range(2):
            hs.keras.set_state(model, layer=i, h=np.tanh(previous), c=previous)
        assert np.allclose(hs.keras.get_state(model).layers[1].c.numpy(), previous)
        model.train_on_batch(series[:, start : start + 8], series[:, start + 1 : start + 9])
    hs.keras.check_state(model)  # still the layers' own Variables after training

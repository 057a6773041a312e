"""A validated state API for live Keras 3 models, on any backend.

A stateful Keras recurrent layer keeps its state in ``layer.states``: Variables it made itself
(``h``, and ``c`` for an LSTM), of shape ``(batch, units)``, which every call reads and then
assigns. Rebinding one (``layer.states[0] = keras.Variable(...)``) goes through silently and
fails only at the next call, with a matmul error that names no layer. Here every write is an
``assign`` into the layer's own Variables, after the library's checks:

    >>> set_state(model, layer=0, h=np.zeros((10, 2)))  # doctest: +SKIP
    StateError: layer 0 (lstm, hidden 8) `h`: expected shape (batch=10, hidden=8), got (10, 2)

Layers are numbered among the model's stateful recurrent layers, in order. Values may be numpy
arrays, torch tensors or Keras tensors of any backend.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, ShapeError, StateError
from hiddenstate.state import LayerSpec, State, StateSpec, _prepare

__all__ = ["check_state", "get_state", "reset_state", "set_state"]

_CELLS = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}
# The state Variables each layer was first seen with: a later rebind shows as another object.
_OWN: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


def _stateful_layers(model: Any) -> list[tuple[Any, LayerSpec]]:
    keras = require("keras", "keras")
    found = []
    for layer in getattr(model, "layers", []):
        kind = next((cell for cls, cell in _CELLS.items() if isinstance(layer, getattr(keras.layers, cls))), None)
        if kind is not None and getattr(layer, "stateful", False):
            found.append((layer, LayerSpec(kind, int(layer.units))))
        elif kind is None and _holds_stateful(layer, keras):
            nested = f"; pass the inner model {layer.name!r} itself" if hasattr(layer, "layers") else ""
            raise ConfigError(
                f"Keras layer {layer.name!r} ({type(layer).__name__}) is or holds a stateful recurrent layer that "
                f"hs.keras does not reach: it reads and writes the model's own LSTM/GRU/SimpleRNN layers only{nested}"
            )
    if not found:
        raise ConfigError(
            f"Keras model {getattr(model, 'name', model)!r} has no stateful recurrent layer; build its LSTM/GRU/"
            "SimpleRNN layers with stateful=True and a fixed batch size (keras.Input(batch_shape=...))"
        )
    return found


def _holds_stateful(layer: Any, keras: Any) -> bool:
    """Whether a wrapper (Bidirectional, TimeDistributed) or a nested model holds a stateful RNN."""
    if isinstance(layer, keras.layers.RNN):
        return bool(getattr(layer, "stateful", False))
    inner = [getattr(layer, name, None) for name in ("forward_layer", "backward_layer", "layer")]
    inner += list(getattr(layer, "layers", None) or [])
    return any(_holds_stateful(sub, keras) for sub in inner if sub is not None)


def _batch(layer: Any) -> int | None:
    batch = getattr(layer, "_expected_batch_size", None)
    return int(batch) if batch is not None else None


def check_state(model: Any) -> None:
    """Raise StateError naming the layer and tensor when a stateful layer's state Variable was
    rebound (it is not the Variable the layer made) or has the wrong shape; else return None."""
    keras = require("keras", "keras")
    for i, (layer, ls) in enumerate(_stateful_layers(model)):
        states = layer.states
        if states is None:
            raise StateError(
                f"{ls.describe(i)}: Keras layer {layer.name!r} is not built yet; call the model once first"
            )
        if not isinstance(states, (list, tuple)) or len(states) != len(ls.tensor_names):
            raise StateError(
                f"{ls.describe(i)}: Keras layer {layer.name!r} states: expected {len(ls.tensor_names)} "
                f"Variables ({', '.join(ls.tensor_names)}), got {type(states).__name__}"
            )
        own = _OWN.get(layer)
        for j, (name, var) in enumerate(zip(ls.tensor_names, states, strict=True)):
            where = f"{ls.describe(i)} `{name}`: Keras layer {layer.name!r} states[{j}]"
            rebound = not isinstance(var, keras.Variable) or not str(var.path).endswith(f"{layer.name}/rnn_state")
            if rebound or (own is not None and own[j] != id(var)):
                what = getattr(var, "path", None) or type(var).__name__
                raise StateError(
                    f"{where} was rebound to {what!r}, which the layer did not make; the layer reads and "
                    "assigns its own Variables, so write states with hs.keras.set_state (it assigns in place), "
                    f"never layer.states[{j}] = ..."
                )
            batch = _batch(layer)
            shape = tuple(int(s) for s in var.shape)
            if len(shape) != 2 or shape[1] != ls.hidden_size or (batch is not None and shape[0] != batch):
                b = "batch" if batch is None else f"batch={batch}"
                raise StateError(f"{where}: expected shape ({b}, hidden={ls.hidden_size}), got {shape}")
        if own is None:
            _OWN[layer] = tuple(id(v) for v in states)


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) or value is None or isinstance(value, (list, tuple, float, int)):
        return value
    keras = require("keras", "keras")
    return keras.ops.convert_to_numpy(value)  # a Keras tensor of another backend


def get_state(model: Any) -> State:
    """The states of every stateful recurrent layer of a live Keras model, in order, as a State
    (float32 torch tensors on the CPU, ``(batch, units)`` each)."""
    check_state(model)
    keras = require("keras", "keras")
    layers = _stateful_layers(model)
    tensors = [
        [torch.from_numpy(np.array(keras.ops.convert_to_numpy(v.value), dtype=np.float32)) for v in layer.states]
        for layer, _ in layers
    ]
    return State.from_tensors(StateSpec([ls for _, ls in layers]), tensors)


def set_state(
    model: Any, state: State | None = None, *, layer: int | None = None, h: Any = None, c: Any = None
) -> None:
    """Assign ``state`` (a State of the model's spec) to every stateful layer, or ``h``/``c`` to one
    layer with ``layer=i``. Shapes are checked first, so a wrong value changes nothing."""
    check_state(model)
    layers = _stateful_layers(model)
    spec = StateSpec([ls for _, ls in layers])
    batch = _batch(layers[0][0])
    writes: list[tuple[Any, np.ndarray]] = []
    if state is not None:
        if layer is not None or h is not None or c is not None:
            raise StateError("set_state: pass either a State or layer=i with h=/c=, not both")
        if not isinstance(state, State) or state.spec != spec:
            got = state.spec.describe() if isinstance(state, State) else type(state).__name__
            raise StateError(f"set_state: expected a State of spec {spec.describe()}, got {got}")
        for i, ((klayer, ls), st) in enumerate(zip(layers, state.layers, strict=True)):
            for j, (name, t) in enumerate(zip(ls.tensor_names, st.tensors(), strict=True)):
                writes.append((klayer.states[j], _checked(ls, i, name, t, _batch(klayer))))
    else:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
            numbered = ", ".join(f"{i}: {k.name!r}" for i, (k, _) in enumerate(layers))
            raise StateError(
                f"set_state: layer must be an int in 0..{len(layers) - 1} (the stateful layers {numbered}), "
                f"got {layer!r}"
            )
        klayer, ls = layers[layer]
        if c is not None and not ls.has_c:
            raise StateError(f"{ls.describe(layer)} `c`: a {ls.cell} layer has no cell state; pass h only")
        if h is None and c is None:
            raise StateError(f"{ls.describe(layer)}: pass h=, c= or both")
        for j, (name, value) in enumerate(zip(ls.tensor_names, (h, c), strict=False)):
            if value is not None:
                writes.append((klayer.states[j], _checked(ls, layer, name, value, _batch(klayer) or batch)))
    for var, value in writes:
        var.assign(value.astype(var.dtype if isinstance(var.dtype, str) else "float32"))


def _checked(ls: LayerSpec, index: int, name: str, value: Any, batch: int | None) -> np.ndarray:
    try:
        t = _prepare(ls, index, name, _as_tensor(_numpy(value), ls, index, name), False, batch)
    except StateError as e:  # the State API's broadcast=True hint names an option set_state does not take
        message = str(e).replace("; pass broadcast=True to copy one (hidden,) vector to every row", "")
        raise StateError(message) from None
    if not bool(torch.isfinite(t).all()):
        raise StateError(f"{ls.describe(index)} `{name}`: contains NaN or inf")
    return t.detach().cpu().numpy()


def _as_tensor(value: Any, ls: LayerSpec, index: int, name: str) -> torch.Tensor:
    """``value`` as float32, when it holds real numbers: a complex value (whose imaginary part a
    cast drops), booleans and strings are refused."""
    try:
        found = np.asarray(value)
    except (TypeError, ValueError):
        found = None
    if found is None or found.dtype.kind not in "fiu":
        shown = f"{found.dtype} array" if found is not None else type(value).__name__
        raise StateError(f"{ls.describe(index)} `{name}`: expected an array of real numbers, got {shown}") from None
    return torch.as_tensor(found.astype(np.float32))


def reset_state(model: Any, mask: Any = None) -> None:
    """Zero the states of the rows where the boolean ``(batch,)`` ``mask`` is true (all rows when
    None), in every stateful layer; the other rows keep their values."""
    check_state(model)
    keras = require("keras", "keras")
    layers = _stateful_layers(model)
    batch = _batch(layers[0][0])
    if mask is not None:
        rows = np.asarray(_numpy(mask))
        if rows.dtype != np.bool_ or rows.shape != (batch,):
            raise ShapeError(
                f"reset mask: expected a boolean array of shape (batch={batch},), got {rows.dtype} {rows.shape}"
            )
    for klayer, _ in layers:
        for var in klayer.states:
            value = np.array(keras.ops.convert_to_numpy(var.value))
            if mask is None:
                value[:] = 0
            else:
                value[rows] = 0
            var.assign(value)

"""From a Keras model config and its weights to a :class:`~hiddenstate.model.SequenceModel`.

The walk takes a Sequential or linear functional model layer by layer:

    InputLayer? -> (LSTM | GRU | SimpleRNN) [Dropout] ... -> [Dropout] (Dense | TimeDistributed(Dense)) ...

Weights are mapped by layer name and every shape is checked:

    Keras LSTM      kernel (in, 4u), recurrent_kernel (u, 4u), bias (4u,); gates i, f, c, o
                    -> weight_ih (4u, in) = kernel.T, weight_hh = recurrent_kernel.T,
                       bias_ih = bias, bias_hh = 0 (torch's gate order is the same: i, f, g, o)
    Keras GRU       gates z, r, h; kernel (in, 3u), bias (2, 3u) = (input, recurrent) for
    (reset_after)   reset_after=True -> torch's r, z, n, bias_ih = bias[0], bias_hh = bias[1]
    Keras SimpleRNN kernel (in, u), recurrent_kernel (u, u), bias (u,) -> nn.RNN(tanh)
    Keras Dense     kernel (in, units), bias (units,) -> nn.Linear weight = kernel.T

What torch cannot compute the same way is refused with a ConfigError naming the Keras layer,
the option and why.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import CheckpointError, ConfigError
from hiddenstate.interop.keras.files import KerasFile
from hiddenstate.model import SequenceModel
from hiddenstate.state import LayerSpec

__all__ = ["RECURRENT", "to_sequence_model"]

#: Keras recurrent layer classes and the cell kind each one becomes.
RECURRENT = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_DENSE_ACTIVATIONS = {
    None: None,
    "linear": None,
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "relu": "relu",
    "softmax": "softmax",
}
_KNOWN = {"InputLayer", "Dropout", "Dense", "TimeDistributed", *RECURRENT}
_WHY = {
    "Bidirectional": "a backward pass over the sequence cannot carry a state from one call to the next",
    "Masking": "skipping masked steps is not part of a hiddenstate stack; drop the mask and the padding",
    "Lambda": "its Python code is never loaded or run here",
}


def _a(word: str) -> str:
    """The article before ``word``: "an Activation", "a Conv1D"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _refuse(layer: str, option: str, why: str) -> ConfigError:
    return ConfigError(f"Keras layer {layer!r}: {option} is not supported: {why}")


def _layers(kf: KerasFile) -> list[dict[str, Any]]:
    """The model's layers in order; for a functional model, checked to form one straight chain."""
    cls = kf.config.get("class_name")
    cfg = kf.config.get("config", {})
    layers = [layer for layer in cfg.get("layers", []) if isinstance(layer, dict)]
    if cls == "Sequential":
        return layers
    if cls not in ("Functional", "Model"):
        raise ConfigError(f"{kf.path}: model class {cls!r} is not supported; expected a Sequential or functional model")
    previous: str | None = None
    for layer in layers:
        name = layer.get("config", {}).get("name") or layer.get("name")
        inbound = _inbound(layer.get("inbound_nodes", []), str(name))
        if layer.get("class_name") == "InputLayer":
            if previous is not None:
                raise _refuse(str(name), "a second input", "only single-input models with one straight chain of layers")
        elif inbound != [previous]:
            raise _refuse(
                str(name), f"inputs {inbound}", "only a straight chain of layers (each fed by the one before)"
            )
        previous = str(name)
    for key, what in (("input_layers", "input"), ("output_layers", "output")):
        ends = _endpoints(cfg.get(key))
        if len(ends) != 1:
            raise ConfigError(
                f"{kf.path}: a model with {len(ends)} {what}s {ends} is not supported; expected one {what}"
            )
    out = _endpoints(cfg.get("output_layers"))[0]
    if out != previous:
        raise _refuse(out, "an output before the last layer", f"the model's output must be its last layer {previous!r}")
    return layers


def _endpoints(value: Any) -> list[str]:
    """The layer names of a functional config's ``input_layers``/``output_layers``: Keras 3 writes
    one as ``[name, 0, 0]`` and several as a list of those; Keras 2 always writes the list."""
    if not isinstance(value, list):
        return []
    if value and isinstance(value[0], str):
        return [value[0]]
    return [str(v[0]) for v in value if isinstance(v, list) and v]


def _inbound(nodes: Any, name: str) -> list[str]:
    """The layer names feeding a layer (Keras 3 ``keras_history`` or Keras 2 ``[[name, 0, 0, {}]]``)."""
    found: list[str] = []
    if len(nodes) > 1:
        raise _refuse(name, "a layer called more than once", "shared layers are not a straight chain")
    for node in nodes:
        if isinstance(node, dict):  # Keras 3
            for key, value in (node.get("kwargs") or {}).items():
                if key != "training" and value is not None:
                    raise _refuse(name, f"the call argument {key!r}", "only the input sequence may be passed")
            args = node.get("args", [])
            for arg in args:
                if isinstance(arg, list):  # a merge layer (Add, Concatenate) takes a list of tensors
                    raise _refuse(name, f"{len(arg)} inputs", "only a straight chain of layers (each fed by one)")
                history = arg.get("config", {}).get("keras_history") if isinstance(arg, dict) else None
                if history is None:
                    raise _refuse(name, "a call argument that is not a tensor", "only the input sequence may be passed")
                found.append(str(history[0]))
        else:  # Keras 2
            for entry in node:
                if len(entry) > 3 and entry[3]:
                    raise _refuse(
                        name, f"the call arguments {sorted(entry[3])}", "only the input sequence may be passed"
                    )
                found.append(str(entry[0]))
    return found


def _check_custom(layer: dict[str, Any], name: str) -> None:
    cls = layer.get("class_name", "")
    module = layer.get("module")
    if cls in _WHY:
        raise _refuse(name, f"{_a(cls)} {cls} layer", _WHY[cls])
    if layer.get("registered_name") not in (None, cls) or (module is not None and not str(module).startswith("keras")):
        raise _refuse(
            name, f"the custom layer class {cls!r}", "only Keras's own layers can be read without running code"
        )
    if cls not in _KNOWN:
        raise _refuse(
            name,
            f"{_a(cls)} {cls} layer",
            "expected InputLayer, LSTM, GRU, SimpleRNN, Dropout, Dense or TimeDistributed(Dense)",
        )


def _activation(value: Any) -> Any:
    if isinstance(value, dict):  # a serialized function: Keras 3 writes built-ins as plain strings
        return value.get("config", value.get("class_name"))
    return value


def _check_recurrent(cls: str, name: str, cfg: dict[str, Any]) -> None:
    act = _activation(cfg.get("activation", "tanh"))
    if act != "tanh":
        raise _refuse(name, f"activation={act!r}", "torch's LSTM, GRU and RNN cells use tanh")
    rec = _activation(cfg.get("recurrent_activation", "sigmoid"))
    if cls != "SimpleRNN" and rec != "sigmoid":
        why = "torch's gates use the exact sigmoid" + (
            " (Keras 2's default hard_sigmoid is a piecewise-linear approximation)" if rec == "hard_sigmoid" else ""
        )
        raise _refuse(name, f"recurrent_activation={rec!r}", why)
    if cls == "GRU" and not cfg.get("reset_after", True):
        raise _refuse(
            name,
            "reset_after=False",
            "torch's GRU applies the reset gate after the recurrent matmul (reset_after=True)",
        )
    if cfg.get("go_backwards"):
        raise _refuse(name, "go_backwards=True", "a reversed pass cannot carry its state on to the next chunk")
    if cfg.get("return_state"):
        raise _refuse(name, "return_state=True", "the state is returned as a hiddenstate State instead")
    if cfg.get("time_major"):
        raise _refuse(name, "time_major=True", "hiddenstate stacks are batch-first")
    for option in ("recurrent_dropout", "dropout"):
        if float(cfg.get(option) or 0.0) > 0:
            warnings.warn(
                f"Keras layer {name!r}: {option}={cfg[option]} is training-only and is not carried over "
                "(predictions are unaffected)",
                UserWarning,
                stacklevel=4,
            )


def _batch_shape(cfg: dict[str, Any]) -> list[Any] | None:
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    return list(shape) if shape is not None else None


def to_sequence_model(kf: KerasFile) -> SequenceModel:
    """Build the SequenceModel that computes what the Keras model in ``kf`` computes."""
    try:
        return _convert(kf)
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # a config.json Keras never writes
        raise CheckpointError(f"{kf.path}: config.json is malformed ({type(e).__name__}: {e})") from None


def _convert(kf: KerasFile) -> SequenceModel:
    layers = _layers(kf)
    recurrent: list[tuple[str, str, dict[str, Any]]] = []  # (keras name, cell, config)
    dense: list[tuple[str, dict[str, Any]]] = []  # (keras name, Dense config)
    gaps: list[float] = []  # dropout rate after each recurrent layer (0: none)
    head_dropout, batch_shape = 0.0, None
    for layer in layers:
        cfg = layer.get("config", {})
        cls = layer.get("class_name", "")
        name = str(cfg.get("name", cls))
        _check_custom(layer, name)
        batch_shape = batch_shape or _batch_shape(cfg)
        if cls == "InputLayer":
            continue
        if cls in RECURRENT:
            if dense:
                raise _refuse(
                    name,
                    f"{_a(cls)} {cls} layer after a Dense layer",
                    "Dense layers are supported after the stack only",
                )
            if recurrent and not recurrent[-1][2].get("return_sequences", False):
                raise _refuse(
                    recurrent[-1][0], "return_sequences=False", "only the last recurrent layer may drop steps"
                )
            _check_recurrent(cls, name, cfg)
            recurrent.append((name, RECURRENT[cls], cfg))
            gaps.append(0.0)
        elif cls == "Dropout":
            rate = float(cfg.get("rate", 0.0))
            if not recurrent:
                warnings.warn(
                    f"Keras layer {name!r}: dropout on the inputs is training-only and is not carried over",
                    UserWarning,
                    stacklevel=3,
                )
            elif not dense:
                gaps[-1] = max(gaps[-1], rate)
            elif rate > 0:
                warnings.warn(
                    f"Keras layer {name!r}: dropout between Dense layers is training-only and is not carried over",
                    UserWarning,
                    stacklevel=3,
                )
        else:  # Dense or TimeDistributed(Dense)
            if not recurrent:
                raise _refuse(
                    name,
                    f"{_a(cls)} {cls} layer before the first recurrent layer",
                    "Dense layers are supported after the stack only",
                )
            if cls == "TimeDistributed":
                inner = cfg.get("layer", {})
                _check_custom(inner, name)
                if inner.get("class_name") != "Dense":
                    raise _refuse(
                        name, f"TimeDistributed({inner.get('class_name')})", "only TimeDistributed(Dense) is supported"
                    )
                cfg = inner.get("config", {})
            act = _activation(cfg.get("activation"))
            if act not in _DENSE_ACTIVATIONS:
                raise _refuse(
                    name,
                    f"activation={act!r}",
                    f"expected one of linear, {', '.join(a for a in _DENSE_ACTIVATIONS if a and a != 'linear')}",
                )
            dense.append((name, cfg))
    if not recurrent:
        raise ConfigError(f"{kf.path}: the model has no LSTM, GRU or SimpleRNN layer")
    stack_dropout = gaps[:-1]
    dropout = stack_dropout[0] if stack_dropout and len(set(stack_dropout)) == 1 else 0.0
    if len(set(stack_dropout)) > 1:
        warnings.warn(
            f"{kf.path}: dropout rates between recurrent layers differ ({stack_dropout}); "
            "training-only, not carried over",
            UserWarning,
            stacklevel=2,
        )
    head_dropout = gaps[-1]
    return _build(kf, recurrent, dense, dropout, head_dropout, batch_shape)


def _weights(kf: KerasFile, name: str, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    got = kf.weights.get(name)
    if got is None:
        raise CheckpointError(f"{kf.path}: no weights for Keras layer {name!r}")
    for key in got:
        if key not in expected:
            raise CheckpointError(f"{kf.path}: Keras layer {name!r} has an unexpected weight {key!r}")
    for key, shape in expected.items():
        if key not in got:
            raise CheckpointError(f"{kf.path}: Keras layer {name!r} has no {key!r} weight")
        if tuple(got[key].shape) != shape:
            raise CheckpointError(
                f"{kf.path}: Keras layer {name!r} weight {key!r}: expected shape {shape}, got {tuple(got[key].shape)}"
            )
    return got


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _build(
    kf: KerasFile,
    recurrent: list[tuple[str, str, dict[str, Any]]],
    dense: list[tuple[str, dict[str, Any]]],
    dropout: float,
    head_dropout: float,
    batch_shape: list[Any] | None,
) -> SequenceModel:
    first = kf.weights.get(recurrent[0][0], {}).get("kernel")
    if first is None or first.ndim != 2:
        raise CheckpointError(f"{kf.path}: no kernel of shape (input, units) for Keras layer {recurrent[0][0]!r}")
    input_size = int(first.shape[0])
    if batch_shape is not None and batch_shape[-1] not in (None, input_size):
        raise CheckpointError(
            f"{kf.path}: the input has {batch_shape[-1]} features but the first kernel takes {input_size}"
        )
    specs = [LayerSpec(cell, int(cfg["units"])) for _, cell, cfg in recurrent]
    biases = [bool(cfg.get("use_bias", True)) for _, _, cfg in recurrent]
    stateful = [bool(cfg.get("stateful")) for _, _, cfg in recurrent]
    batch = batch_shape[0] if batch_shape and isinstance(batch_shape[0], int) else None
    last_units = specs[-1].hidden_size
    if dense:
        *hidden, (_, head_cfg) = dense
        output_size = int(head_cfg["units"])
        head_activation = _DENSE_ACTIVATIONS[_activation(head_cfg.get("activation"))]
        dense_sizes = [
            (int(c["units"]), _DENSE_ACTIVATIONS[_activation(c.get("activation"))], bool(c.get("use_bias", True)))
            for _, c in hidden
        ]
        head_bias = bool(head_cfg.get("use_bias", True))
    else:  # the stack's own output: an identity head (exact: 1 * h + 0)
        output_size, head_activation, dense_sizes, head_bias = last_units, None, [], False
    # Every weight is checked against the shapes the config declares before the model is built, so
    # a config that names absurd sizes is refused by its file's weights, never allocated.
    size, rec_weights = input_size, []
    for (name, _, _), ls, bias in zip(recurrent, specs, biases, strict=True):
        u, g = ls.hidden_size, _GATES[ls.cell]
        expected: dict[str, tuple[int, ...]] = {"kernel": (size, g * u), "recurrent_kernel": (u, g * u)}
        if bias:
            expected["bias"] = (2, g * u) if ls.cell == "gru" else (g * u,)
        rec_weights.append(_weights(kf, name, expected))
        size = u
    dense_weights = []
    for name, cfg in dense:
        units = int(cfg["units"])
        expected = {"kernel": (size, units)}
        if cfg.get("use_bias", True):
            expected["bias"] = (units,)
        dense_weights.append(_weights(kf, name, expected))
        size = units
    model = SequenceModel(
        input_size,
        output_size,
        specs,
        dropout=dropout,
        head_activation=head_activation,
        dense=dense_sizes,
        head_bias=head_bias,
        head_dropout=head_dropout,
        return_sequences=bool(recurrent[-1][2].get("return_sequences", False)),
        rnn_bias=biases,
        stateful=stateful,
        batch_size=batch if any(stateful) else None,
    )
    with torch.no_grad():
        cells: list[Any] = list(model.rnn.cells)
        for w, ls, bias, cell in zip(rec_weights, specs, biases, cells, strict=True):
            u, g = ls.hidden_size, _GATES[ls.cell]
            kernel, rec = w["kernel"], w["recurrent_kernel"]
            b_in: Any = w["bias"][0] if ls.cell == "gru" and bias else w.get("bias")
            b_rec: Any = w["bias"][1] if ls.cell == "gru" and bias else None
            if ls.cell == "gru":  # Keras z, r, h -> torch r, z, n
                order = np.r_[u : 2 * u, 0:u, 2 * u : 3 * u]
                kernel, rec = kernel[:, order], rec[:, order]
                b_in = b_in[order] if b_in is not None else None
                b_rec = b_rec[order] if b_rec is not None else None
            cell.weight_ih_l0.copy_(_t(kernel.T))
            cell.weight_hh_l0.copy_(_t(rec.T))
            if bias:
                cell.bias_ih_l0.copy_(_t(b_in))
                cell.bias_hh_l0.copy_(_t(b_rec) if b_rec is not None else torch.zeros(g * u))
        linears: list[Any] = [*model.dense, model.head] if dense else []
        for w, linear in zip(dense_weights, linears, strict=True):
            linear.weight.copy_(_t(w["kernel"].T))
            if "bias" in w:
                linear.bias.copy_(_t(w["bias"]))
        if not dense:
            model.head.weight.copy_(torch.eye(last_units))
    return model.eval()

"""The way back: an hs :class:`~hiddenstate.SequenceModel` as a Keras 3 ``.keras`` file.

The inverse of :mod:`hiddenstate.interop.keras.convert`: LSTM, GRU (``reset_after=True``) and
SimpleRNN layers, Dropout where the model has dropout, the Dense layers and the head. torch's two
biases ``bias_ih + bias_hh`` become Keras's one (GRU keeps both, as its ``(2, 3u)`` bias).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError
from hiddenstate.model import SequenceModel
from hiddenstate.runs.files import atomic_write

__all__ = ["save"]

_KERAS_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _refusals(model: Any) -> None:
    if not isinstance(model, SequenceModel):
        raise ConfigError(f"hs.keras.save takes a SequenceModel, got {type(model).__name__}")
    if model.encoder is not None:
        raise ConfigError(
            f"hs.keras.save: state_encoder={model.state_encoder_kind!r} (an initial state encoded from cond) "
            "cannot be represented in Keras, whose recurrent layers start from zeros"
        )
    if model.learned is not None:
        raise ConfigError(
            "hs.keras.save: state_encoder='learned' (a learned initial state) cannot be represented in Keras, "
            "whose recurrent layers start from zeros"
        )
    if model.direct_head is not None:
        raise ConfigError(
            f"hs.keras.save: the direct head (horizon={model.horizon}) has no place in a Keras Sequential"
        )
    if model.likelihood is not None:
        raise ConfigError(
            f"hs.keras.save: likelihood={model.likelihood.name!r} outputs a distribution's parameters per step, "
            "which a Keras Dense layer has no way to say"
        )
    if model.stateful and model.batch_size is None:
        raise ConfigError("hs.keras.save: a stateful model needs its batch_size for Keras's fixed batch shape")


def _recurrent_weights(cell: Any, kind: str, bias: bool) -> list[np.ndarray]:
    u = cell.hidden_size
    kernel, rec = _np(cell.weight_ih_l0).T, _np(cell.weight_hh_l0).T  # (in, g*u), (u, g*u)
    b_ih = _np(cell.bias_ih_l0) if bias else None
    b_hh = _np(cell.bias_hh_l0) if bias else None
    if kind == "gru":  # torch r, z, n -> Keras z, r, h
        order = np.r_[u : 2 * u, 0:u, 2 * u : 3 * u]
        kernel, rec = kernel[:, order], rec[:, order]
        return [kernel, rec] + ([np.stack([b_ih[order], b_hh[order]])] if bias else [])  # type: ignore[index]
    return [kernel, rec] + ([b_ih + b_hh] if bias else [])  # type: ignore[operator]


def build_keras_model(model: SequenceModel) -> Any:
    """The Keras Sequential computing what ``model`` computes, weights set (not saved)."""
    _refusals(model)
    keras = require("keras", "keras")
    spec = model.state_spec
    if model.stateful:
        inputs = keras.Input(batch_shape=(model.batch_size, None, model.input_size))
    else:
        inputs = keras.Input(shape=(None, model.input_size))
    layers: list[Any] = []
    weights: list[tuple[Any, list[np.ndarray]]] = []
    p = model.rnn.dropout.p if model.rnn.dropout is not None else 0.0
    last = spec.num_layers - 1
    layer_options = zip(spec.layers, model.rnn.cells, model.rnn.bias, model.stateful_layers, strict=True)
    for i, (ls, cell, bias, stateful) in enumerate(layer_options):
        options: dict[str, Any] = {
            "return_sequences": model.return_sequences if i == last else True,
            "stateful": stateful,
            "use_bias": bias,
        }
        if ls.cell == "gru":
            options["reset_after"] = True
        layer = getattr(keras.layers, _KERAS_CLASS[ls.cell])(ls.hidden_size, **options)
        layers.append(layer)
        weights.append((layer, _recurrent_weights(cell, ls.cell, bias)))
        if i < last and p > 0:
            layers.append(keras.layers.Dropout(p))
    if model.head_dropout is not None:
        layers.append(keras.layers.Dropout(model.head_dropout.p))
    linears: list[Any] = [
        *zip(model.dense, model.dense_sizes, strict=True),
        (model.head, (model.output_size, model.head_activation, model.head.bias is not None)),
    ]
    for linear, (units, activation, bias) in linears:
        layer = keras.layers.Dense(units, activation=activation, use_bias=bias)
        layers.append(layer)
        weights.append((layer, [_np(linear.weight).T] + ([_np(linear.bias)] if bias else [])))
    km = keras.Sequential([inputs, *layers])
    for layer, values in weights:
        layer.set_weights(values)
    return km


def save(model: SequenceModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a Keras 3 ``.keras`` file at ``path`` (atomically); returns the path.

    Raises ConfigError naming what Keras cannot represent: a learned or conditional initial
    state, a direct multi-step head.
    """
    target = Path(path)
    if target.suffix != ".keras":
        raise ConfigError(f"{target}: hs.keras.save writes a .keras file; give a path ending in .keras")
    km = build_keras_model(model)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.keras")
    try:
        km.save(tmp)  # Keras writes only to a path ending in .keras; the bytes then go in atomically
        atomic_write(target, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return target

"""What the ONNX exporter reads from a model or a run: weights, head, initial state, scalers.

Everything is turned into numpy arrays in a :class:`~hiddenstate.interop._onnx_graph.GraphPlan`;
anything this exporter cannot express exactly is refused here, in one line that names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiddenstate.errors import ConfigError
from hiddenstate.interop._onnx_graph import GraphPlan

__all__ = ["Source", "make_plan", "source_of"]


class Source:
    """A model with, for a run, its scalers and column names."""

    def __init__(self, model: Any, scaler: Any = None, target_scaler: Any = None, inputs: Any = (), targets: Any = ()):
        self.model = model
        self.scaler = scaler
        self.target_scaler = target_scaler
        self.inputs = tuple(inputs)
        self.targets = tuple(targets)


def source_of(model_or_run: Any) -> Source:
    """A :class:`Source` from a SequenceModel, a loaded Run, or a run directory's path."""
    import os

    if isinstance(model_or_run, Source):
        return model_or_run
    if isinstance(model_or_run, (str, os.PathLike)):
        from hiddenstate.runs.run import load_run

        model_or_run = load_run(model_or_run)
    if hasattr(model_or_run, "model") and hasattr(model_or_run, "manifest"):
        run = model_or_run
        return Source(run.model, run.scaler, getattr(run, "target_scaler", None), run.inputs, run.targets)
    return Source(model_or_run)


def _np(t: Any) -> np.ndarray:
    return np.asarray(t.detach().cpu().double().numpy())


def _bias(cell: Any, name: str) -> np.ndarray:
    """A recurrent layer's bias, or zeros for one built without (Keras ``use_bias=False``)."""
    if getattr(cell, "bias", True):
        return _np(getattr(cell, name))
    rows = cell.weight_ih_l0.shape[0]  # (gates * hidden, input)
    return np.zeros(rows, dtype=np.float64)


def _head_steps(model: Any) -> list[tuple[Any, ...]]:
    """The head as ``("linear", W, b)`` / ``("act", name)`` steps, from the head modules themselves."""
    from torch import nn

    acts: dict[type, str] = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu"}
    head = getattr(model, "head", None)
    modules = list(head) if isinstance(head, nn.Sequential) else [head]
    steps: list[tuple[Any, ...]] = []
    # Dense layers before the head (a Keras import's hidden Dense stack), each with its activation
    for k, (layer, (_, activation, _)) in enumerate(
        zip(getattr(model, "dense", ()), getattr(model, "dense_sizes", ()), strict=True)
    ):
        steps.append(("linear", _np(layer.weight), None if layer.bias is None else _np(layer.bias)))
        if activation is not None:
            if activation not in ("tanh", "sigmoid", "relu", "softmax"):
                raise ConfigError(f"model.dense[{k}] activation {activation!r} has no ONNX export here")
            steps.append(("act", activation))
    for k, m in enumerate(modules):
        if isinstance(m, nn.Linear):
            steps.append(("linear", _np(m.weight), None if m.bias is None else _np(m.bias)))
        elif type(m) in acts:
            steps.append(("act", acts[type(m)]))
        elif isinstance(m, nn.Softmax) and m.dim in (-1, None):
            steps.append(("act", "softmax"))
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        else:
            where = "model.head" if len(modules) == 1 else f"model.head[{k}]"
            raise ConfigError(
                f"{where}: {type(m).__name__} has no ONNX export here; supported heads are Linear layers "
                "with tanh, sigmoid, relu or softmax between them"
            )
    activation = getattr(model, "head_activation", None)
    if activation is not None:
        if activation not in ("tanh", "sigmoid", "relu", "softmax"):
            raise ConfigError(f"model.head_activation {activation!r} has no ONNX export here")
        steps.append(("act", activation))
    return steps


def _refuse_unsupported(model: Any) -> None:
    from hiddenstate.model import SequenceModel

    # another model kind (a SegRNN) has an rnn too, but its graph is not a stack plus a per-step head
    if not isinstance(model, SequenceModel):
        raise ConfigError(
            f"export_onnx takes a hiddenstate SequenceModel (or a run of one), got {type(model).__name__}"
        )
    rnn = model.rnn
    name = getattr(model, "likelihood_name", None)
    if name is not None or getattr(model, "likelihood", None) is not None:
        raise ConfigError(
            f"model.likelihood {name!r}: a likelihood head has no ONNX export here; export a model with a point head"
        )
    for i, cell in enumerate(rnn.cells):
        if getattr(cell, "nonlinearity", "tanh") != "tanh" or getattr(cell, "proj_size", 0):
            raise ConfigError(f"layer {i}: only tanh RNN cells and LSTMs without projection export")


def _last_step(model: Any) -> bool:
    """Whether ``y`` is the last step only ``(batch, output)`` (a Keras ``return_sequences=False`` import)."""
    if getattr(model, "return_sequences", True) is False:
        return True
    return bool(getattr(model, "last_step", False) or getattr(model, "last_step_only", False))


def make_plan(source: Source, *, units: str, reset: bool) -> GraphPlan:
    """The graph plan of ``source``; raises ConfigError for what the graph cannot express."""
    import torch

    model = source.model
    _refuse_unsupported(model)
    if units not in ("original", "normalised"):
        raise ConfigError(f"units {units!r}: expected 'original' or 'normalised'")
    spec = model.rnn.state_spec
    cells = []
    for ls, cell in zip(spec.layers, model.rnn.cells, strict=True):
        cells.append(
            (
                ls.cell,
                ls.hidden_size,
                _np(cell.weight_ih_l0),
                _np(cell.weight_hh_l0),
                _bias(cell, "bias_ih_l0"),
                _bias(cell, "bias_hh_l0"),
            )
        )
    encoder = getattr(model, "encoder", None)
    learned = getattr(model, "learned", None)
    if encoder is not None and not reset:
        raise ConfigError("a model with a state encoder needs the reset input: cond is read where reset is true")
    plan = GraphPlan(
        input_size=int(model.input_size),
        output_size=int(model.output_size),
        cells=cells,
        head=_head_steps(model),
        last_step=_last_step(model),
        reset=reset,
    )
    if learned is not None:
        with torch.no_grad():
            init = learned(1)
        plan.initial = {n: _np(t) for n, t in zip(spec.names, init.tensors(), strict=True)}
    if encoder is not None:
        trunk = None
        if encoder.trunk is not None:
            trunk = (_np(encoder.trunk[0].weight), _np(encoder.trunk[0].bias))
        h_heads = [(_np(m.weight), _np(m.bias)) for m in encoder.h_heads]
        c_heads = {int(k): (_np(m.weight), _np(m.bias)) for k, m in encoder.c_heads.items()}
        plan.encoder = (trunk, h_heads, c_heads)
        plan.cond_size = int(encoder.cond_size)
    if units == "original" and source.scaler is not None:
        plan.x_shift, plan.y_shift = _shifts(source)
        if encoder is not None:
            if plan.cond_size != plan.input_size:
                raise ConfigError(
                    f"cond has {plan.cond_size} columns and x {plan.input_size}: the run's scaler cannot scale "
                    "cond; export with units='normalised'"
                )
            plan.cond_shift = plan.x_shift
    return plan


def _shifts(source: Source) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    scaler = source.scaler
    mean, std = getattr(scaler, "mean", None), getattr(scaler, "std", None)
    if mean is None or std is None:
        raise ConfigError(
            f"the run's scaler {type(scaler).__name__} is not a StandardScaler; export units='normalised'"
        )
    target = source.target_scaler
    if target is None:
        missing = [t for t in source.targets if t not in source.inputs]
        if missing:
            raise ConfigError(f"target {missing[0]!r} is not an input and the run has no target scaler")
        target = scaler.select([source.inputs.index(t) for t in source.targets])
    return (np.asarray(mean), np.asarray(std)), (np.asarray(target.mean), np.asarray(target.std))

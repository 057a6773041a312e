"""The ONNX graph of a :class:`~hiddenstate.model.SequenceModel`, built node by node from its weights.

One ONNX ``LSTM``/``GRU``/``RNN`` node per layer (the whole sequence in one node, never a per-step
unrolling), with the state as explicit graph inputs and outputs::

    x (batch, steps, input_size) ─ [Sub mean, Div std] ─ Transpose ─┐          (steps, batch, input)
    state_in.layers.i.h/.c (batch, hidden_i) ─ Where(reset, init, ·) ┴ LSTM/GRU/RNN ── ... ── head
    y (batch, steps, output_size) ─ [Mul std, Add mean]             state_out.layers.i.h/.c

Gate orders differ: torch stacks an LSTM's gates as i, f, g, o and ONNX as i, o, f, c; a GRU's
as r, z, n in torch and z, r, h in ONNX, whose ``linear_before_reset=1`` is torch's GRU (the reset
gate multiplies ``W_hn h + b_hn``, not ``h``). The weights are reordered here, once.

ONNX's recurrent nodes are sequence-first (ONNX Runtime does not run ``layout=1``), so ``x`` is
transposed once on the way in and the head's output once on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiddenstate.errors import ConfigError

__all__ = ["GraphPlan", "build_graph"]

# torch's gate blocks, in the order ONNX wants them
_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
_NODE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_ACTIVATION_NODES = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


@dataclass
class GraphPlan:
    """Everything the graph needs, as numpy arrays: no torch beyond this point.

    ``cells`` holds per layer ``(kind, hidden, w_ih, w_hh, b_ih, b_hh)`` in torch's layout;
    ``head`` a list of ``("linear", weight, bias)`` and ``("act", name)`` steps; ``initial`` the
    ``(1, hidden)`` rows a reset row starts from (zeros or learned) per state name, or
    ``encoder`` the state encoder's ``(trunk, h_heads, c_heads)`` weights; ``x_shift`` and
    ``y_shift`` the ``(mean, std)`` folded in for original units.
    """

    input_size: int
    output_size: int
    cells: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    head: list[tuple[Any, ...]]
    last_step: bool = False
    initial: dict[str, np.ndarray] | None = None
    encoder: tuple[Any, list[tuple[np.ndarray, np.ndarray]], dict[int, tuple[np.ndarray, np.ndarray]]] | None = None
    cond_size: int = 0
    x_shift: tuple[np.ndarray, np.ndarray] | None = None
    y_shift: tuple[np.ndarray, np.ndarray] | None = None
    cond_shift: tuple[np.ndarray, np.ndarray] | None = None
    reset: bool = True
    reset_dims: tuple[str | int, ...] = ("batch",)
    metadata: dict[str, str] = field(default_factory=dict)

    def state_names(self) -> list[tuple[str, int]]:
        """``(name, hidden)`` per state tensor, ``layers.{i}.h`` then ``layers.{i}.c``."""
        names = []
        for i, (kind, hidden, *_) in enumerate(self.cells):
            names.append((f"layers.{i}.h", hidden))
            if kind == "lstm":
                names.append((f"layers.{i}.c", hidden))
        return names


def _reorder(kind: str, w: np.ndarray, hidden: int) -> np.ndarray:
    blocks = [w[k * hidden : (k + 1) * hidden] for k in range(len(_GATE_ORDER[kind]))]
    return np.concatenate([blocks[k] for k in _GATE_ORDER[kind]], axis=0)


class _Builder:
    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: Sequence[str], outputs: Sequence[str] | None = None, **attrs: Any) -> Any:
        if outputs is None:
            self._n += 1
            outputs = [f"{kind.lower()}_{self._n}"]
        self.nodes.append(self.helper.make_node(kind, list(inputs), list(outputs), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def build_graph(plan: GraphPlan, opset: int) -> Any:
    """The ``onnx.ModelProto`` of ``plan`` at ``opset`` (14 or later)."""
    from onnx import TensorProto, helper

    b = _Builder()
    states = plan.state_names()
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "steps", plan.input_size])]
    inputs += [helper.make_tensor_value_info(f"state_in.{n}", TensorProto.FLOAT, ["batch", h]) for n, h in states]
    if plan.reset:
        inputs.append(helper.make_tensor_value_info("reset", TensorProto.BOOL, list(plan.reset_dims)))
    if plan.encoder is not None:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.FLOAT, ["batch", plan.cond_size]))

    x = "x"
    if plan.x_shift is not None:
        mean, std = plan.x_shift
        x = b.op("Div", [b.op("Sub", [x, b.const("x_mean", _f32(mean))]), b.const("x_std", _f32(std))])
    seq = b.op("Transpose", [x], perm=[1, 0, 2])  # (steps, batch, input)

    # the state each layer starts from: state_in, or the initial state on rows where reset is true
    starts = {n: f"state_in.{n}" for n, _ in states}
    if plan.reset:
        mask = b.op("Reshape", ["reset", b.const("col_shape", np.array([-1, 1], np.int64))])  # (batch, 1)
        initial = _encoder_states(b, plan) if plan.encoder is not None else _constant_states(b, plan)
        for n, _ in states:
            starts[n] = b.op("Where", [mask, initial[n], f"state_in.{n}"])  # NaN in state_in never leaks

    axis0 = b.const("axis0", np.array([0], np.int64))
    axis1 = b.const("axis1", np.array([1], np.int64))
    outputs_state: list[tuple[str, str]] = []
    for i, (kind, hidden, w_ih, w_hh, b_ih, b_hh) in enumerate(plan.cells):
        w = b.const(f"layers.{i}.W", _f32(_reorder(kind, w_ih, hidden))[None])
        r = b.const(f"layers.{i}.R", _f32(_reorder(kind, w_hh, hidden))[None])
        bias = b.const(
            f"layers.{i}.B", _f32(np.concatenate([_reorder(kind, b_ih, hidden), _reorder(kind, b_hh, hidden)]))[None]
        )
        h0 = b.op("Unsqueeze", [starts[f"layers.{i}.h"], axis0])  # (1, batch, hidden)
        node_in = [seq, w, r, bias, "", h0]
        attrs: dict[str, Any] = {"hidden_size": hidden}
        n_out = 2
        if kind == "lstm":
            node_in.append(b.op("Unsqueeze", [starts[f"layers.{i}.c"], axis0]))
            n_out = 3
        elif kind == "gru":
            attrs["linear_before_reset"] = 1  # torch's GRU; 0 is another cell
        outs = [f"layers.{i}.Y", f"layers.{i}.Y_h"] + ([f"layers.{i}.Y_c"] if n_out == 3 else [])
        b.op(_NODE[kind], node_in, outs, **attrs)
        seq = b.op("Squeeze", [outs[0], axis1])  # (steps, batch, hidden): one direction
        b.op("Squeeze", [outs[1], axis0], [f"state_out.layers.{i}.h"])
        outputs_state.append((f"state_out.layers.{i}.h", str(hidden)))
        if n_out == 3:
            b.op("Squeeze", [outs[2], axis0], [f"state_out.layers.{i}.c"])

    if plan.last_step:  # (batch, hidden) of the last step
        seq = b.op(
            "Squeeze",
            [
                b.op(
                    "Slice",
                    [
                        seq,
                        b.const("last_start", np.array([-1], np.int64)),
                        b.const("last_end", np.array([np.iinfo(np.int64).max], np.int64)),
                        axis0,
                    ],
                ),
                axis0,
            ],
        )
    out = _head(b, plan, seq)
    if plan.y_shift is not None:
        mean, std = plan.y_shift
        out = b.op("Add", [b.op("Mul", [out, b.const("y_std", _f32(std))]), b.const("y_mean", _f32(mean))])
    if plan.last_step:
        b.op("Identity", [out], ["y"])
        y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", plan.output_size])
    else:
        b.op("Transpose", [out], ["y"], perm=[1, 0, 2])  # (batch, steps, output)
        y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "steps", plan.output_size])
    outputs = [y_info] + [
        helper.make_tensor_value_info(f"state_out.{n}", TensorProto.FLOAT, ["batch", h]) for n, h in states
    ]
    graph = helper.make_graph(b.nodes, "hiddenstate", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hiddenstate")
    model.ir_version = min(model.ir_version, 9)  # readable by ONNX Runtime releases of the last two years
    helper.set_model_props(model, plan.metadata)
    return model


def _head(b: _Builder, plan: GraphPlan, seq: str) -> str:
    out = seq
    for k, step in enumerate(plan.head):
        if step[0] == "linear":
            weight, bias = step[1], step[2]
            out = b.op("MatMul", [out, b.const(f"head.{k}.weight_t", _f32(weight).T.copy())])
            if bias is not None:
                out = b.op("Add", [out, b.const(f"head.{k}.bias", _f32(bias))])
        elif step[1] == "softmax":
            out = b.op("Softmax", [out], axis=-1)
        elif step[1] in _ACTIVATION_NODES:
            out = b.op(_ACTIVATION_NODES[step[1]], [out])
        else:  # pragma: no cover - the plan is checked where it is made
            raise ConfigError(f"head step {k}: unknown activation {step[1]!r}")
    return out


def _constant_states(b: _Builder, plan: GraphPlan) -> dict[str, str]:
    initial = plan.initial or {}
    return {
        n: b.const(f"initial.{n}", _f32(initial[n]).reshape(1, h) if n in initial else np.zeros((1, h), np.float32))
        for n, h in plan.state_names()
    }


def _encoder_states(b: _Builder, plan: GraphPlan) -> dict[str, str]:
    """The state encoder's ``(batch, hidden_i)`` outputs from ``cond``, as Gemm-free MatMul + Add."""
    assert plan.encoder is not None
    trunk, h_heads, c_heads = plan.encoder
    z = "cond"
    if plan.cond_shift is not None:
        mean, std = plan.cond_shift
        z = b.op("Div", [b.op("Sub", [z, b.const("cond_mean", _f32(mean))]), b.const("cond_std", _f32(std))])
    if trunk is not None:
        z = b.op(
            "Tanh",
            [
                b.op(
                    "Add",
                    [
                        b.op("MatMul", [z, b.const("encoder.trunk.weight_t", _f32(trunk[0]).T.copy())]),
                        b.const("encoder.trunk.bias", _f32(trunk[1])),
                    ],
                )
            ],
        )
    states: dict[str, str] = {}
    for i, (weight, bias) in enumerate(h_heads):
        lin = b.op(
            "Add",
            [
                b.op("MatMul", [z, b.const(f"encoder.h.{i}.weight_t", _f32(weight).T.copy())]),
                b.const(f"encoder.h.{i}.bias", _f32(bias)),
            ],
        )
        states[f"layers.{i}.h"] = b.op("Tanh", [lin])
        if i in c_heads:
            weight, bias = c_heads[i]
            states[f"layers.{i}.c"] = b.op(
                "Add",
                [
                    b.op("MatMul", [z, b.const(f"encoder.c.{i}.weight_t", _f32(weight).T.copy())]),
                    b.const(f"encoder.c.{i}.bias", _f32(bias)),
                ],
            )
    return states

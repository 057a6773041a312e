"""Recurrent stacks whose state is an explicit :class:`~hiddenstate.state.State`.

``y, state = model(x, state)``: nothing changes a state behind the caller's back. The one place
that carries state between calls is :class:`~hiddenstate.stateful.Stateful`, and it says so.

Each layer is a single-layer ``torch.nn.LSTM``/``GRU``/``RNN`` with ``batch_first=True``, so the
whole sequence runs in one cuDNN/oneDNN kernel call per layer; there is no Python loop over
time steps. Layers may have different hidden sizes, which one ``nn.LSTM`` cannot do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hiddenstate._kernels.torch import hx_for_layers as _hx
from hiddenstate._kernels.torch import layer_groups as _layer_groups
from hiddenstate._kernels.torch import rnn_kernel as _rnn_kernel
from hiddenstate.errors import ConfigError, ShapeError, StateError
from hiddenstate.likelihood import get_likelihood, resolve_likelihood
from hiddenstate.state import LayerSpec, LayerState, State, StateSpec

__all__ = [
    "GRU",
    "LSTM",
    "MODEL_KINDS",
    "RNN",
    "LearnedInitialState",
    "SequenceModel",
    "StackedRNN",
    "StateEncoder",
    "build_model",
    "register_model_kind",
]

#: Model classes by the ``"kind"`` of their ``config()``; run directories rebuild models from it.
MODEL_KINDS: dict[str, type[nn.Module]] = {}


def register_model_kind(kind: str) -> Any:
    """Class decorator: make ``build_model({"kind": kind, ...})`` build this class.

    The class provides ``config() -> dict`` (JSON-safe, with ``"kind"``) and a classmethod
    ``from_config(dict)``.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        MODEL_KINDS[kind] = cls
        cls.kind = kind  # type: ignore[attr-defined]
        return cls

    return deco


# Model kinds defined outside this module, imported on first use so the core stays light.
_KIND_MODULES = {"segrnn": "hiddenstate.models.segrnn"}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``config()``; raises ConfigError for an unknown kind."""
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in MODEL_KINDS and kind in _KIND_MODULES:
        import importlib

        importlib.import_module(_KIND_MODULES[kind])  # registers the kind on import
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}")
    return MODEL_KINDS[kind].from_config(config)  # type: ignore[attr-defined,no-any-return]


def LSTM(hidden_size: int) -> LayerSpec:  # noqa: N802 - reads like a layer constructor
    """An LSTM layer of ``hidden_size`` units, for :class:`StackedRNN`'s ``layers`` list."""
    return LayerSpec("lstm", hidden_size)


def GRU(hidden_size: int) -> LayerSpec:  # noqa: N802
    """A GRU layer of ``hidden_size`` units."""
    return LayerSpec("gru", hidden_size)


def RNN(hidden_size: int) -> LayerSpec:  # noqa: N802
    """A plain tanh RNN layer of ``hidden_size`` units."""
    return LayerSpec("rnn", hidden_size)


_TORCH_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


class StackedRNN(nn.Module):
    """A stack of recurrent layers of any cell kinds and sizes.

    Args:
        input_size: features per time step of ``x``.
        layers: e.g. ``[hs.LSTM(8), hs.LSTM(16)]``, or a :class:`StateSpec`.
        dropout: dropout on the outputs between layers (not after the last), as in ``nn.LSTM``.
        bias: whether the layers have biases (one bool, or one per layer; Keras's ``use_bias``).

    ``forward(x, state=None) -> (y, State)``: ``x`` is ``(batch, steps, input_size)``, ``y`` is
    ``(batch, steps, hidden_last)``; ``state`` None means zeros.

    >>> rnn = StackedRNN(2, [LSTM(8), LSTM(16)])
    >>> y, s = rnn(torch.zeros(10, 96, 2))
    >>> tuple(y.shape), s.spec.state_size
    ((10, 96, 16), ((8, 8), (16, 16)))
    """

    def __init__(
        self,
        input_size: int,
        layers: Sequence[LayerSpec] | StateSpec,
        dropout: float = 0.0,
        bias: bool | Sequence[bool] = True,
    ) -> None:
        super().__init__()
        spec = layers if isinstance(layers, StateSpec) else StateSpec(layers)
        biases = [bias] * spec.num_layers if isinstance(bias, bool) else [bool(b) for b in bias]
        if len(biases) != spec.num_layers:
            raise ConfigError(f"bias: expected one bool or {spec.num_layers} (one per layer), got {len(biases)}")
        self.bias = tuple(biases)
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ConfigError(f"input_size must be a positive int, got {input_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self._spec = spec
        self.cells = nn.ModuleList()
        size = input_size
        for ls, has_bias in zip(spec.layers, biases, strict=True):
            kwargs: dict[str, Any] = {"batch_first": True, "bias": has_bias}
            if ls.cell == "rnn":
                kwargs["nonlinearity"] = "tanh"
            self.cells.append(_TORCH_CELLS[ls.cell](size, ls.hidden_size, **kwargs))
            size = ls.hidden_size
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.backend = "torch"
        self._fused: Any = None
        # Runs of consecutive layers of one kind and size: the default backend runs each run in
        # one multi-layer kernel call, as one nn.LSTM(num_layers=k) would (same result).
        self._singles = [(i, i + 1) for i in range(spec.num_layers)]  # one call per layer
        # (a multi-layer call takes one bias setting: mixed ones run layer by layer)
        self._groups = _layer_groups(spec) if all(biases) or not any(biases) else self._singles
        self._cell_list: list[nn.RNNBase] = list(self.cells)  # the same modules, as a plain list

    def set_backend(self, backend: str) -> None:
        """``"torch"`` (default): one cuDNN/oneDNN kernel call per layer (on the CPU, one per run
        of consecutive layers of one kind and size, as ``nn.LSTM(num_layers=k)`` would make).
        ``"fused"``: each LSTM layer's time loop runs in one call into a small C kernel on the
        CPU (see :mod:`hiddenstate._kernels.fused`); same weights and results (to ~1e-6), faster for small
        models. Raises ConfigError for a stack it cannot run."""
        if backend == "fused":
            from hiddenstate._kernels.fused import check_fusable, fused_lstm

            check_fusable(self.cells)
            self._fused = fused_lstm
        elif backend == "torch":
            self._fused = None
        else:
            raise ConfigError(f"unknown backend {backend!r}; expected 'torch' or 'fused'")
        self.backend = backend

    @property
    def state_spec(self) -> StateSpec:
        return self._spec

    @property
    def output_size(self) -> int:
        return self._spec.layers[-1].hidden_size

    def check_input(self, x: torch.Tensor, state: State | None) -> None:
        """Cheap structural checks at the call boundary (no device sync)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[2] != self.input_size:
            got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"x: expected shape (batch, steps, input={self.input_size}), got {got}")
        if state is None:
            return
        if not isinstance(state, State):
            raise StateError(
                f"state: expected a hiddenstate.State, got {type(state).__name__}; "
                "build one with State.from_tensors(spec, ...)"
            )
        if state.spec != self._spec:
            raise StateError(f"state spec {state.spec.describe()} differs from the model's {self._spec.describe()}")
        if state.batch_size != x.shape[0]:
            raise StateError(f"state has batch {state.batch_size} but x has batch {x.shape[0]}")
        # The fused kernel reads the state's memory as x's dtype, so a mismatch would give wrong
        # numbers, not an error; under autocast the carried state is legitimately half precision.
        if state.device != x.device or (state.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type)):
            raise StateError(
                f"state is {state.dtype} on {state.device} but x is {x.dtype} on {x.device}; "
                "convert it with state.to(device=..., dtype=...)"
            )

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self.check_input(x, state)
        return self.run_unchecked(x, state)

    def layer_outputs(self, x: torch.Tensor, state: State | None = None) -> tuple[list[torch.Tensor], State]:
        """Every layer's per-step ``h`` (``(batch, steps, hidden_i)`` each) and the final State."""
        self.check_input(x, state)
        outputs: list[torch.Tensor] = []
        new_layers: list[LayerState] = []
        out = x
        last = len(self.cells) - 1
        for i in range(len(self.cells)):
            out, layers = self._run_layers(i, i + 1, out, state)
            new_layers.extend(layers)
            outputs.append(out)
            if self.dropout is not None and i < last:
                out = self.dropout(out)
        return outputs, State._trusted(self._spec, new_layers)

    def run_unchecked(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """``forward`` for inputs already checked with :meth:`check_input` (the hot path)."""
        new_layers: list[LayerState] = []
        out = x
        groups = self._groups if self._groupable(x) else self._singles
        for g, (start, end) in enumerate(groups):
            if g and self.dropout is not None:
                out = self.dropout(out)
            out, layers = self._run_layers(start, end, out, state)
            new_layers.extend(layers)
        return out, State._trusted(self._spec, new_layers)

    def _groupable(self, x: torch.Tensor) -> bool:
        """Whether runs of same-sized layers may go through one multi-layer kernel call: on the
        default backend, on the CPU (oneDNN draws dropout masks as nn.Dropout does; cuDNN wants a
        multi-layer call's weights in one flat buffer, which separate modules do not share, and
        draws its own masks), with no hooks on the cells."""
        if self._groups == self._singles or self._fused is not None or x.device.type != "cpu":
            return False
        for c in self._cell_list:
            if c._forward_hooks or c._forward_pre_hooks:
                return False
        return True

    def _run_layers(
        self, start: int, end: int, x: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, list[LayerState]]:
        """Layers ``start .. end-1`` (one kind and size when more than one) over ``x``."""
        ls = self._spec.layers[start]
        cells = self._cell_list[start:end]  # (slicing the ModuleList would build a new one: slow)
        cell = cells[0]
        if self._fused is not None:  # one layer at a time
            out, hn = self._fused(cell, x, _hx(state, start, end, ls.has_c))
        elif cell._forward_hooks or cell._forward_pre_hooks or torch.jit.is_scripting():
            out, hn = cell(x, _hx(state, start, end, ls.has_c))
        else:  # the kernel call nn.LSTM.forward ends in, without its per-call Python checks
            out, hn = _rnn_kernel(ls.cell, cells, x, _hx(state, start, end, ls.has_c), self._p())
        if ls.has_c:
            return out, [LayerState(h, c) for h, c in zip(hn[0].unbind(0), hn[1].unbind(0), strict=True)]
        return out, [LayerState(h) for h in hn.unbind(0)]

    def _p(self) -> float:
        return self.dropout.p if self.dropout is not None else 0.0


class StateEncoder(nn.Module):
    """A learned map from a conditioning vector to a full State for every layer.

    ``forward(cond)`` takes ``cond`` of shape ``(batch, cond_size)`` (for the seed user, the true
    observation just before the minibatch) and returns a State. Each layer has its own output
    for ``h`` (through tanh, so it lies in (-1, 1) like an LSTM's own ``h``) and for ``c``.
    With ``hidden`` set, a tanh hidden layer of that width comes first.

    >>> enc = StateEncoder(2, StateSpec([("lstm", 8), ("lstm", 16)]))
    >>> s = enc(torch.zeros(10, 2))
    >>> s.batch_size, tuple(s.layers[1].h.shape)
    (10, (10, 16))
    """

    def __init__(self, cond_size: int, spec: StateSpec, hidden: int | None = None) -> None:
        super().__init__()
        if cond_size < 1:
            raise ConfigError(f"cond_size must be at least 1, got {cond_size}")
        self.cond_size = cond_size
        self.spec = spec
        self.trunk = nn.Sequential(nn.Linear(cond_size, hidden), nn.Tanh()) if hidden else None
        width = hidden or cond_size
        self.h_heads = nn.ModuleList(nn.Linear(width, ls.hidden_size) for ls in spec.layers)
        self.c_heads = nn.ModuleDict(
            {str(i): nn.Linear(width, ls.hidden_size) for i, ls in enumerate(spec.layers) if ls.has_c}
        )

    def forward(self, cond: torch.Tensor) -> State:
        if not isinstance(cond, torch.Tensor) or cond.dim() != 2 or cond.shape[1] != self.cond_size:
            got = _shape(cond) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ShapeError(f"cond: expected shape (batch, cond={self.cond_size}), got {got}")
        z = self.trunk(cond) if self.trunk is not None else cond
        layers = []
        for i, ls in enumerate(self.spec.layers):
            h = torch.tanh(self.h_heads[i](z))  # (batch, hidden_i), bounded like an LSTM's h
            c = self.c_heads[str(i)](z) if ls.has_c else None
            layers.append(LayerState(h, c))
        return State._trusted(self.spec, layers)


class LearnedInitialState(nn.Module):
    """A learned constant initial state, the same for every row.

    ``forward(batch_size)`` returns a State whose rows all equal the learned vectors; ``h`` goes
    through tanh so it stays in (-1, 1).
    """

    def __init__(self, spec: StateSpec) -> None:
        super().__init__()
        self.spec = spec
        self.h0 = nn.ParameterList(nn.Parameter(torch.zeros(ls.hidden_size)) for ls in spec.layers)
        self.c0 = nn.ParameterList(nn.Parameter(torch.zeros(ls.hidden_size if ls.has_c else 0)) for ls in spec.layers)

    def forward(self, batch_size: int) -> State:
        layers = []
        for i, ls in enumerate(self.spec.layers):
            h = torch.tanh(self.h0[i]).unsqueeze(0).expand(batch_size, -1)  # (batch, hidden_i)
            c = self.c0[i].unsqueeze(0).expand(batch_size, -1) if ls.has_c else None
            layers.append(LayerState(h, c))
        return State._trusted(self.spec, layers)


_ACTIVATIONS: dict[str, Any] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softmax": lambda t: torch.softmax(t, dim=-1),
}


_KERAS_KEYS = ("dense", "head_bias", "head_dropout", "return_sequences", "rnn_bias", "stateful", "batch_size")


@register_model_kind("sequence")
class SequenceModel(nn.Module):
    """A :class:`StackedRNN` plus a per-step linear head (Keras's ``TimeDistributed(Dense)``).

    Args:
        input_size, output_size: features in and out per step.
        layers: e.g. ``[hs.LSTM(8), hs.LSTM(8)]``.
        dropout: between recurrent layers.
        head_activation: None (linear), ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"softmax"``.
        state_encoder: where a missing state comes from: None (zeros), ``"cond:N"`` (a
            :class:`StateEncoder` from an N-wide conditioning vector) or ``"learned"``
            (:class:`LearnedInitialState`).
        horizon: when > 0, adds a direct multi-step head that maps the final top-layer ``h``
            to ``(batch, horizon, output_size)``; see :meth:`forecast_direct`.
        likelihood: None (point outputs), ``"studentt"``, ``"normal"`` or ``"negbin"`` (True or
            ``"default"``: Student-t). The head then outputs each step's distribution parameters,
            ``y`` ``(batch, steps, n_params * output_size)``; see :mod:`hiddenstate.likelihood`.

    For models brought in from Keras (:func:`hiddenstate.interop.keras.load`):

        dense: Dense layers between the stack and the head, each ``(units, activation)`` or
            ``(units, activation, bias)``; activation None is linear.
        head_bias: whether the head has a bias; ``rnn_bias``: the recurrent layers' (a bool or one
            per layer).
        head_dropout: dropout on the stack's output, before the Dense layers (training only).
        return_sequences: False makes ``y`` the last step's output only, ``(batch, output_size)``;
            ``forward(..., sequences=True)`` still gives every step's.
        stateful, batch_size: recorded as the source model declared them (Keras ``stateful=True``,
            a bool or one per layer, and its fixed batch size); they change no computation.
            ``stateful`` reads True when any layer is, ``stateful_layers`` gives each layer's.

    ``forward(x, state=None, *, cond=None, reset=None) -> (y, State)`` with ``x``
    ``(batch, steps, input_size)`` and ``y`` ``(batch, steps, output_size)``. A missing state
    comes from :meth:`initial_state`; ``reset`` is a boolean ``(batch,)`` mask of rows that go
    back to the initial state before the step.

    >>> m = SequenceModel(2, 2, [LSTM(8), LSTM(8)], state_encoder="cond:2")
    >>> y, s = m(torch.zeros(10, 96, 2), cond=torch.zeros(10, 2))
    >>> tuple(y.shape)
    (10, 96, 2)
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        layers: Sequence[LayerSpec] | StateSpec,
        dropout: float = 0.0,
        head_activation: str | None = None,
        state_encoder: str | None = None,
        horizon: int = 0,
        *,
        dense: Sequence[Sequence[Any]] = (),
        head_bias: bool = True,
        head_dropout: float = 0.0,
        return_sequences: bool = True,
        rnn_bias: bool | Sequence[bool] = True,
        stateful: bool | Sequence[bool] = False,
        batch_size: int | None = None,
        likelihood: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
            raise ConfigError(f"output_size must be a positive int, got {output_size!r}")
        if head_activation is not None and head_activation not in _ACTIVATIONS:
            raise ConfigError(f"unknown head_activation {head_activation!r}; expected one of {', '.join(_ACTIVATIONS)}")
        self.rnn = StackedRNN(input_size, layers, dropout, bias=rnn_bias)
        self.input_size = input_size
        self.output_size = output_size
        self.head_activation = head_activation
        self._keras_options(dense, head_dropout, return_sequences, stateful, batch_size)
        self.likelihood_name = resolve_likelihood(likelihood)
        if self.likelihood_name is not None and head_activation is not None:
            raise ConfigError(f"head_activation {head_activation!r}: a likelihood head outputs raw parameters")
        self.likelihood = None if self.likelihood_name is None else get_likelihood(self.likelihood_name)
        n_params = 1 if self.likelihood is None else self.likelihood.n_params
        self.head = nn.Linear(
            self.dense_sizes[-1][0] if self.dense_sizes else self.rnn.output_size,
            output_size * n_params,
            bias=head_bias,
        )
        self.state_encoder_kind = state_encoder
        self.encoder: StateEncoder | None = None
        self.learned: LearnedInitialState | None = None
        self.cond_size = 0
        if state_encoder == "learned":
            self.learned = LearnedInitialState(self.state_spec)
        elif isinstance(state_encoder, str) and state_encoder.startswith("cond:"):
            try:
                self.cond_size = int(state_encoder.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"state_encoder {state_encoder!r}: expected 'cond:N' with an int N") from None
            self.encoder = StateEncoder(self.cond_size, self.state_spec)
        elif state_encoder is not None:
            raise ConfigError(f"unknown state_encoder {state_encoder!r}; expected None, 'cond:N' or 'learned'")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise ConfigError(f"horizon must be an int >= 0, got {horizon!r}")
        self.horizon = horizon
        self.direct_head = nn.Linear(self.rnn.output_size, horizon * output_size) if horizon > 0 else None

    def _keras_options(
        self,
        dense: Sequence[Sequence[Any]],
        head_dropout: float,
        return_sequences: bool,
        stateful: bool | Sequence[bool],
        batch: Any,
    ) -> None:
        """The Dense layers and the flags of a model brought in from Keras (see the class docstring)."""
        self.dense_sizes: list[tuple[int, str | None, bool]] = []
        self.dense = nn.ModuleList()
        width = self.rnn.output_size
        for i, entry in enumerate(dense):
            units, activation, bias = (*entry, True) if len(entry) == 2 else tuple(entry)
            if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                raise ConfigError(f"dense[{i}]: units must be a positive int, got {units!r}")
            if activation is not None and activation not in _ACTIVATIONS:
                raise ConfigError(
                    f"dense[{i}]: unknown activation {activation!r}; expected one of {', '.join(_ACTIVATIONS)}"
                )
            self.dense.append(nn.Linear(width, units, bias=bool(bias)))
            self.dense_sizes.append((units, activation, bool(bias)))
            width = units
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"head_dropout must be in [0, 1), got {head_dropout}")
        self.head_dropout = nn.Dropout(head_dropout) if head_dropout > 0 else None
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ConfigError(f"batch_size must be a positive int or None, got {batch!r}")
        n = self.rnn.state_spec.num_layers
        flags = [stateful] * n if isinstance(stateful, bool) else [bool(f) for f in stateful]
        if len(flags) != n:
            raise ConfigError(f"stateful: expected one bool or {n} (one per layer), got {len(flags)}")
        # Keras carries only the layers built with stateful=True (the seed model: layer 0, not 1).
        self.stateful_layers = tuple(flags)
        self.return_sequences, self.stateful, self.batch_size = bool(return_sequences), any(flags), batch

    def _keras_config(self) -> dict[str, Any]:
        """The config keys of :meth:`_keras_options`, only where they differ from the defaults."""
        extra: dict[str, Any] = {}
        if self.dense_sizes:
            extra["dense"] = [list(d) for d in self.dense_sizes]
        if self.head.bias is None:
            extra["head_bias"] = False
        if self.head_dropout is not None:
            extra["head_dropout"] = self.head_dropout.p
        if not self.return_sequences:
            extra["return_sequences"] = False
        if not all(self.rnn.bias):
            extra["rnn_bias"] = list(self.rnn.bias)
        if self.stateful or self.batch_size is not None:
            mixed = len(set(self.stateful_layers)) > 1
            extra.update(stateful=list(self.stateful_layers) if mixed else self.stateful, batch_size=self.batch_size)
        return extra

    @property
    def state_spec(self) -> StateSpec:
        return self.rnn.state_spec

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (not its weights), JSON-safe."""
        config: dict[str, Any] = {
            "kind": "sequence",
            "input_size": self.input_size,
            "output_size": self.output_size,
            "layers": self.state_spec.to_json(),
            "dropout": self.rnn.dropout.p if self.rnn.dropout is not None else 0.0,
            "head_activation": self.head_activation,
            "state_encoder": self.state_encoder_kind,
            "horizon": self.horizon,
            **self._keras_config(),
        }
        if self.likelihood_name is not None:  # point models keep the config they always had
            config["likelihood"] = self.likelihood_name
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SequenceModel:
        try:
            return cls(
                config["input_size"],
                config["output_size"],
                StateSpec.from_json(config["layers"]),
                dropout=config.get("dropout", 0.0),
                head_activation=config.get("head_activation"),
                state_encoder=config.get("state_encoder"),
                horizon=config.get("horizon", 0),
                **{k: config[k] for k in _KERAS_KEYS if k in config},
                likelihood=config.get("likelihood"),
            )
        except KeyError as e:
            raise ConfigError(f"model config is missing {e.args[0]!r}") from None

    def initial_state(self, batch_size: int, cond: torch.Tensor | None = None) -> State:
        """The state a fresh row starts from: encoded from ``cond``, learned, or zeros."""
        if self.encoder is not None:
            if cond is None:
                raise ShapeError(
                    f"this model sets its state from cond (state_encoder='cond:{self.cond_size}'); "
                    f"pass cond of shape (batch={batch_size}, cond={self.cond_size})"
                )
            if isinstance(cond, torch.Tensor) and cond.dim() == 2 and cond.shape[0] != batch_size:
                raise ShapeError(
                    f"cond: expected shape (batch={batch_size}, cond={self.cond_size}), got {_shape(cond)}"
                )
            return self.encoder(cond)
        if self.learned is not None:
            return self.learned(batch_size)
        p = self.head.weight
        return State.zeros(self.state_spec, batch_size, dtype=p.dtype, device=p.device)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        *,
        cond: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
        sequences: bool | None = None,
    ) -> tuple[torch.Tensor, State]:
        self.rnn.check_input(x, state)
        batch = x.shape[0]
        if state is None:
            state = self.initial_state(batch, cond)
        elif reset is not None:
            has_initial = self.encoder is not None or self.learned is not None
            fresh = self.initial_state(batch, cond) if has_initial else None
            state = state.reset(reset, to=fresh)
        out, new_state = self.rnn.run_unchecked(x, state)  # out: (batch, steps, hidden_last); x checked above
        if not (self.return_sequences if sequences is None else sequences):
            out = out[:, -1]  # (batch, hidden_last): Keras's return_sequences=False
        return self.apply_head(out), new_state

    def apply_head(self, out: torch.Tensor) -> torch.Tensor:
        if self.head_dropout is not None:
            out = self.head_dropout(out)
        for layer, (_, activation, _) in zip(self.dense, self.dense_sizes, strict=True):
            out = layer(out) if activation is None else _ACTIVATIONS[activation](layer(out))  # (..., units)
        y = self.head(out)  # (batch, steps, output_size)
        if self.head_activation is not None:
            y = _ACTIVATIONS[self.head_activation](y)
        return y

    def distribution(self, y: torch.Tensor, scale: torch.Tensor | None = None) -> Any:
        """The ``torch.distributions`` object of a likelihood model's output ``y`` (``scale``:
        the series' mean scale, broadcast to ``(..., output_size)``)."""
        if self.likelihood is None:
            raise ConfigError("this model has point outputs; build it with likelihood='studentt' (or True)")
        return self.likelihood.distribution(y, scale)

    def forecast_direct(self, state: State) -> torch.Tensor:
        """``(batch, horizon, output_size)`` straight from the final top-layer ``h``."""
        if self.direct_head is None:
            raise ConfigError("this model has no direct head; build it with horizon=H > 0")
        h = state.layers[-1].h  # (batch, hidden_last)
        return self.direct_head(h).view(h.shape[0], self.horizon, self.output_size)

"""LayerState and State: the hidden state of a recurrent stack as a validated value.

Its structure, :class:`~hiddenstate.spec.StateSpec` (re-exported here), lives in :mod:`hiddenstate.spec`.

A stack of recurrent layers has one state per layer. An LSTM layer has two tensors, ``h`` (the
output, bounded by tanh) and ``c`` (the cell memory, unbounded); a GRU or plain RNN layer has
only ``h``. Every tensor is ``(batch, hidden)`` where ``hidden`` is that layer's own size, so a
stack may mix sizes::

    layer 0 (lstm, hidden 8)    h (batch, 8)    c (batch, 8)
    layer 1 (lstm, hidden 16)   h (batch, 16)   c (batch, 16)

A :class:`State` is immutable. Every way to make one from user tensors (``from_tensors``,
``from_dict``, ``from_torch``, ``replace``) validates layer count, h/c presence, shape, dtype,
device and finiteness, and errors name the layer, the cell, the tensor and both shapes.
States that the library derives from valid ones (a model's output, ``detach``, ``select``) are
not checked again: validation happens at the boundary, not per step.

This module is pure: no files, no network, no terminal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hiddenstate.errors import ShapeError, StateError
from hiddenstate.spec import CELLS, LayerSpec, StateSpec

__all__ = ["CELLS", "LayerSpec", "LayerState", "State", "StateSpec"]


@dataclass(frozen=True)
class LayerState:
    """One layer's state: ``h`` of shape ``(batch, hidden)`` and, for LSTM only, ``c`` likewise."""

    h: torch.Tensor
    c: torch.Tensor | None = None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.h,) if self.c is None else (self.h, self.c)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class State:
    """The hidden state of every layer of a stack, validated against a :class:`StateSpec`.

    A State is immutable: methods return new States. ``state.layers[i]`` is a
    :class:`LayerState` whose tensors are ``(batch, hidden_i)``.

    >>> spec = StateSpec([("lstm", 8), ("lstm", 16)])
    >>> s = State.zeros(spec, batch_size=10)
    >>> s.batch_size, tuple(s.layers[1].c.shape)
    (10, (10, 16))
    >>> s.replace(1, c=torch.zeros(10, 2))
    Traceback (most recent call last):
    ...
    hiddenstate.errors.StateError: layer 1 (lstm, hidden 16) `c`: expected shape (batch=10, hidden=16), got (10, 2)
    """

    __slots__ = ("_layers", "_spec")

    _layers: tuple[LayerState, ...]
    _spec: StateSpec

    def __init__(self, spec: StateSpec, layers: Sequence[LayerState]) -> None:
        layers = tuple(layers)
        _validate(spec, layers)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_layers", layers)

    @classmethod
    def _trusted(cls, spec: StateSpec, layers: Sequence[LayerState]) -> State:
        """Build without validation; only for states derived from already valid ones."""
        self = cls.__new__(cls)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_layers", tuple(layers))
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"State is immutable; use replace(layer, h=..., c=...) instead of setting {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"State is immutable; cannot delete {name!r}")

    def __copy__(self) -> State:
        return self  # immutable: a shallow copy would share every tensor anyway

    def __deepcopy__(self, memo: dict[int, Any]) -> State:
        """The same values in tensors of their own (``copy.deepcopy`` of a Forecaster or a run's
        objects reaches here: the default copier would set the slots, which immutability refuses).
        The spec, which nothing can change, is shared, as every derived State shares it."""
        layers = [LayerState(*(copy.deepcopy(t, memo) for t in ls.tensors())) for ls in self._layers]
        return State._trusted(self._spec, layers)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def zeros(
        cls,
        spec: StateSpec,
        batch_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> State:
        """All-zero state for ``batch_size`` rows, the same as ``nn.LSTM``'s default."""
        if batch_size < 1:
            raise StateError(f"batch_size must be at least 1, got {batch_size}")
        layers = []
        for ls in spec.layers:
            h = torch.zeros(batch_size, ls.hidden_size, dtype=dtype, device=device)
            layers.append(LayerState(h, torch.zeros_like(h) if ls.has_c else None))
        return cls._trusted(spec, layers)

    @classmethod
    def from_tensors(
        cls,
        spec: StateSpec,
        tensors: Sequence[Any],
        *,
        broadcast: bool = False,
        batch_size: int | None = None,
    ) -> State:
        """Build from one entry per layer: ``(h, c)`` for LSTM, ``h`` or ``(h,)`` for GRU/RNN.

        With ``broadcast=True`` a ``(hidden,)`` vector is copied to every row; the batch size
        then comes from another tensor or from ``batch_size``.
        """
        if not isinstance(tensors, Sequence) or isinstance(tensors, torch.Tensor):
            raise StateError(f"from_tensors takes one entry per layer (a list), got {type(tensors).__name__}")
        if len(tensors) != spec.num_layers:
            raise StateError(f"expected {spec.num_layers} layers for spec {spec.describe()}, got {len(tensors)}")
        pairs: list[tuple[Any, Any]] = []
        for i, (ls, entry) in enumerate(zip(spec.layers, tensors, strict=True)):
            if isinstance(entry, torch.Tensor):
                h, c = entry, None
            elif isinstance(entry, Sequence) and len(entry) in (1, 2):
                h, c = entry[0], (entry[1] if len(entry) == 2 else None)
            else:
                want = "(h, c)" if ls.has_c else "h or (h,)"
                raise StateError(f"{ls.describe(i)}: expected {want}, got {type(entry).__name__}")
            pairs.append((h, c))
        return cls._build(spec, pairs, broadcast=broadcast, batch_size=batch_size)

    @classmethod
    def from_dict(
        cls,
        spec: StateSpec,
        d: Mapping[str, Any],
        *,
        broadcast: bool = False,
        batch_size: int | None = None,
    ) -> State:
        """Build from the names of :meth:`to_dict` (``"layers.0.h"``, ``"layers.0.c"``, ...)."""
        known = set(spec.names)
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            raise StateError(
                f"unknown state tensor {unknown[0]!r} for spec {spec.describe()}; "
                f"expected names {', '.join(spec.names)}"
            )
        pairs = [(d.get(f"layers.{i}.h"), d.get(f"layers.{i}.c")) for i in range(spec.num_layers)]
        return cls._build(spec, pairs, broadcast=broadcast, batch_size=batch_size)

    @classmethod
    def from_torch(cls, spec: StateSpec, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> State:
        """Build from ``nn.LSTM``'s ``(h_n, c_n)`` or ``nn.GRU``'s ``h_n``, each ``(layers, batch, hidden)``."""
        _require_uniform(spec, "from_torch")
        if spec.layers[0].has_c:
            if not (isinstance(hx, tuple) and len(hx) == 2):
                raise StateError("from_torch for an lstm spec takes the pair (h_n, c_n)")
            h_all, c_all = hx
        else:
            if isinstance(hx, tuple):
                if len(hx) != 1:
                    raise StateError(f"from_torch for a {spec.layers[0].cell} spec takes h_n alone")
                hx = hx[0]
            h_all, c_all = hx, None
        for name, t in (("h_n", h_all), ("c_n", c_all)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != spec.num_layers:
                shape = _shape_str(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise StateError(
                    f"from_torch `{name}`: expected shape (layers={spec.num_layers}, batch, "
                    f"hidden={spec.layers[0].hidden_size}), got {shape}"
                )
        pairs = [(h_all[i], None if c_all is None else c_all[i]) for i in range(spec.num_layers)]
        return cls._build(spec, pairs, broadcast=False, batch_size=None)

    @classmethod
    def cat(cls, states: Sequence[State]) -> State:
        """Concatenate states of one spec along the batch (many streams into one batch)."""
        states = list(states)
        if not states:
            raise StateError("State.cat needs at least one state")
        spec = states[0].spec
        for k, s in enumerate(states):
            if not isinstance(s, State):
                raise StateError(f"State.cat item {k}: expected a State, got {type(s).__name__}")
            if s.spec != spec:
                raise StateError(
                    f"State.cat item {k}: spec {s.spec.describe()} differs from item 0's {spec.describe()}"
                )
            if (s.dtype, s.device) != (states[0].dtype, states[0].device):
                raise StateError(
                    f"State.cat item {k}: {s.dtype} on {s.device} differs from item 0's "
                    f"{states[0].dtype} on {states[0].device}"
                )
        layers = []
        for i, ls in enumerate(spec.layers):
            h = torch.cat([s._layers[i].h for s in states], dim=0)
            c = torch.cat([s._layers[i].c for s in states], dim=0) if ls.has_c else None  # type: ignore[misc]
            layers.append(LayerState(h, c))
        return cls._trusted(spec, layers)

    @classmethod
    def _build(
        cls,
        spec: StateSpec,
        pairs: Sequence[tuple[Any, Any]],
        *,
        broadcast: bool,
        batch_size: int | None,
    ) -> State:
        # Find the batch size from the first 2-D tensor when the caller did not give it.
        if batch_size is None:
            for h, c in pairs:
                for t in (h, c):
                    if isinstance(t, torch.Tensor) and t.dim() == 2:
                        batch_size = int(t.shape[0])
                        break
                if batch_size is not None:
                    break
        layers = []
        for i, (ls, (h, c)) in enumerate(zip(spec.layers, pairs, strict=True)):
            h = _prepare(ls, i, "h", h, broadcast, batch_size)
            if c is not None and not ls.has_c:
                raise StateError(f"{ls.describe(i)} `c`: a {ls.cell} layer has no cell state; pass h only")
            if c is None and ls.has_c:
                raise StateError(f"{ls.describe(i)} `c`: missing; an lstm layer needs both h and c")
            c = _prepare(ls, i, "c", c, broadcast, batch_size) if c is not None else None
            layers.append(LayerState(h, c))
        return cls(spec, layers)

    # -- properties ---------------------------------------------------------------------------

    @property
    def spec(self) -> StateSpec:
        return self._spec

    @property
    def layers(self) -> tuple[LayerState, ...]:
        return self._layers

    @property
    def batch_size(self) -> int:
        return int(self._layers[0].h.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self._layers[0].h.dtype

    @property
    def device(self) -> torch.device:
        return self._layers[0].h.device

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor in the order of ``spec.names``."""
        return tuple(t for ls in self._layers for t in ls.tensors())

    # -- derived states -----------------------------------------------------------------------

    def replace(
        self,
        layer: int,
        h: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
        *,
        broadcast: bool = False,
    ) -> State:
        """A new State with layer ``layer``'s ``h`` and/or ``c`` replaced, validated."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self._spec.num_layers:
            raise StateError(
                f"layer index {layer!r} out of range for a {self._spec.num_layers}-layer spec {self._spec.describe()}"
            )
        ls = self._spec.layers[layer]
        if c is not None and not ls.has_c:
            raise StateError(f"{ls.describe(layer)} `c`: a {ls.cell} layer has no cell state; pass h only")
        old = self._layers[layer]
        new_h = old.h if h is None else self._prepare_like(ls, layer, "h", h, broadcast)
        new_c = old.c if c is None else self._prepare_like(ls, layer, "c", c, broadcast)
        layers = list(self._layers)
        layers[layer] = LayerState(new_h, new_c)
        return State(self._spec, layers)

    def _prepare_like(self, ls: LayerSpec, index: int, name: str, t: Any, broadcast: bool) -> torch.Tensor:
        """``_prepare`` for a tensor joining this State: same batch, dtype and device, else blame it."""
        if not isinstance(t, torch.Tensor):
            try:
                t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
            except (TypeError, ValueError, RuntimeError):
                raise StateError(f"{ls.describe(index)} `{name}`: expected a tensor, got {_not_a_tensor(t)}") from None
        t = _prepare(ls, index, name, t, broadcast, self.batch_size)
        if (t.dtype, t.device) != (self.dtype, self.device):
            raise StateError(
                f"{ls.describe(index)} `{name}`: {t.dtype} on {t.device} differs from the state's "
                f"{self.dtype} on {self.device}; convert it with .to(dtype=..., device=...)"
            )
        return t

    def detach(self) -> State:
        """The same values cut from the autograd graph (truncated BPTT does this each chunk)."""
        return State._trusted(
            self._spec,
            [LayerState(ls.h.detach(), None if ls.c is None else ls.c.detach()) for ls in self._layers],
        )

    def reset(self, mask: torch.Tensor, to: State | None = None) -> State:
        """Rows where the boolean ``(batch,)`` mask is true go back to zeros, or to ``to``'s rows.

        Differentiable through ``to``, so a learned initial state trains through resets.
        """
        if not isinstance(mask, torch.Tensor) or mask.shape != (self.batch_size,):
            got = _shape_str(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ShapeError(f"reset mask: expected shape (batch={self.batch_size},), got {got}")
        if to is not None:
            if not isinstance(to, State) or to.spec != self._spec or to.batch_size != self.batch_size:
                raise StateError(
                    f"reset(to=...): expected a State of spec {self._spec.describe()} and batch "
                    f"{self.batch_size}, got "
                    + (f"{to.spec.describe()} batch {to.batch_size}" if isinstance(to, State) else type(to).__name__)
                )
            if (to.dtype, to.device) != (self.dtype, self.device):
                raise StateError(
                    f"reset(to=...): {to.dtype} on {to.device} differs from the state's {self.dtype} on {self.device}"
                )
        keep = mask.to(device=self.device, dtype=torch.bool).unsqueeze(1)  # (batch, 1)
        layers = []
        for i, ls in enumerate(self._layers):
            target = None if to is None else to._layers[i]
            h = torch.where(keep, target.h if target else torch.zeros_like(ls.h), ls.h)
            c = None
            if ls.c is not None:
                c = torch.where(keep, target.c if target else torch.zeros_like(ls.c), ls.c)  # type: ignore[arg-type]
            layers.append(LayerState(h, c))
        return State._trusted(self._spec, layers)

    def select(self, rows: torch.Tensor | Sequence[int] | slice) -> State:
        """The rows ``rows`` (indices, a boolean mask or a slice) as a new State."""
        if isinstance(rows, slice):
            index: Any = rows
        else:
            index = torch.as_tensor(rows, device=self.device)
            if index.numel() == 0:
                raise StateError("select: no rows selected; a State has at least one row")
            if index.dtype == torch.bool:
                if index.shape != (self.batch_size,):
                    raise ShapeError(
                        f"select mask: expected shape (batch={self.batch_size},), got {_shape_str(index.shape)}"
                    )
            elif index.dtype.is_floating_point or index.dtype.is_complex:
                raise ShapeError(f"select rows: expected integer indices or a boolean mask, got {index.dtype}")
            elif index.dim() != 1:
                raise ShapeError(f"select rows: expected a 1-D list of row indices, got {_shape_str(index.shape)}")
            elif index.numel() and (int(index.min()) < -self.batch_size or int(index.max()) >= self.batch_size):
                raise ShapeError(f"select rows: index out of range for batch {self.batch_size}")
        layers = [LayerState(ls.h[index], None if ls.c is None else ls.c[index]) for ls in self._layers]
        if layers[0].h.shape[0] == 0:
            raise StateError("select: no rows selected; a State has at least one row")
        return State._trusted(self._spec, layers)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
        """The same state moved to ``device`` and/or cast to the floating ``dtype``."""
        if dtype is not None and not dtype.is_floating_point:
            raise StateError(f"a State holds floating tensors; cannot cast to {dtype}")
        return State._trusted(
            self._spec,
            [
                LayerState(
                    ls.h.to(device=device, dtype=dtype),
                    None if ls.c is None else ls.c.to(device=device, dtype=dtype),
                )
                for ls in self._layers
            ],
        )

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"layers.0.h": (batch, hidden_0), "layers.0.c": ..., ...}``; ready for safetensors."""
        return dict(zip(self._spec.names, self.tensors(), strict=True))

    def to_torch(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``nn.LSTM``'s ``(h_n, c_n)`` or ``nn.GRU``'s ``h_n``, each ``(layers, batch, hidden)``."""
        _require_uniform(self._spec, "to_torch")
        h = torch.stack([ls.h for ls in self._layers])
        if self._spec.layers[0].has_c:
            return h, torch.stack([ls.c for ls in self._layers])  # type: ignore[misc]
        return h

    def allclose(self, other: State, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """True when ``other`` has the same spec and batch and every tensor is close."""
        return (
            isinstance(other, State)
            and other.spec == self._spec
            and other.batch_size == self.batch_size
            and all(
                torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol)
                for a, b in zip(self.tensors(), other.tensors(), strict=True)
            )
        )

    def __repr__(self) -> str:
        return f"State(spec={self._spec.describe()}, batch={self.batch_size}, dtype={self.dtype}, device={self.device})"


def _require_uniform(spec: StateSpec, what: str) -> None:
    first = spec.layers[0]
    if any(ls != first for ls in spec.layers):
        raise StateError(
            f"{what} needs every layer to share one cell kind and hidden size, as nn.LSTM does; "
            f"spec is {spec.describe()}"
        )


def _not_a_tensor(t: Any) -> str:
    """What a value torch could not read as a tensor is: a list says why (ragged rows or not numbers)."""
    if isinstance(t, list | tuple):
        return f"a {type(t).__name__} that is not numbers in rows of one length"
    return type(t).__name__


def _prepare(ls: LayerSpec, index: int, name: str, t: Any, broadcast: bool, batch_size: int | None) -> torch.Tensor:
    """Turn a user value into a ``(batch, hidden)`` tensor, or raise naming layer and tensor."""
    where = f"{ls.describe(index)} `{name}`"
    if t is None:
        raise StateError(f"{where}: missing")
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise StateError(f"{where}: expected a tensor, got {_not_a_tensor(t)}") from None
    if t.dim() == 1 and broadcast:
        if t.shape[0] != ls.hidden_size:
            raise StateError(
                f"{where}: expected shape (hidden={ls.hidden_size},) to broadcast, got {_shape_str(t.shape)}"
            )
        if batch_size is None:
            raise StateError(f"{where}: broadcast needs a batch size; pass batch_size=")
        t = t.unsqueeze(0).expand(batch_size, ls.hidden_size)
    expected_batch = "batch" if batch_size is None else f"batch={batch_size}"
    if t.dim() != 2 or t.shape[1] != ls.hidden_size or (batch_size is not None and t.shape[0] != batch_size):
        hint = ""
        if t.dim() == 1 and t.shape[0] == ls.hidden_size:
            hint = "; pass broadcast=True to copy one (hidden,) vector to every row"
        raise StateError(
            f"{where}: expected shape ({expected_batch}, hidden={ls.hidden_size}), got {_shape_str(t.shape)}{hint}"
        )
    return t


def _validate(spec: StateSpec, layers: tuple[LayerState, ...]) -> None:
    """Check a State fully: layer count, h/c presence, shape, dtype, device, finiteness."""
    if not isinstance(spec, StateSpec):
        raise StateError(f"expected a StateSpec, got {type(spec).__name__}")
    if len(layers) != spec.num_layers:
        raise StateError(f"expected {spec.num_layers} layers for spec {spec.describe()}, got {len(layers)}")
    ref: torch.Tensor | None = None
    for i, (ls, st) in enumerate(zip(spec.layers, layers, strict=True)):
        if not isinstance(st, LayerState):
            raise StateError(f"{ls.describe(i)}: expected a LayerState, got {type(st).__name__}")
        if st.c is None and ls.has_c:
            raise StateError(f"{ls.describe(i)} `c`: missing; an lstm layer needs both h and c")
        if st.c is not None and not ls.has_c:
            raise StateError(f"{ls.describe(i)} `c`: a {ls.cell} layer has no cell state; pass h only")
        for name, t in (("h", st.h), ("c", st.c)):
            if t is None:
                continue
            where = f"{ls.describe(i)} `{name}`"
            if not isinstance(t, torch.Tensor):
                raise StateError(f"{where}: expected a tensor, got {type(t).__name__}")
            batch = "batch" if ref is None else f"batch={ref.shape[0]}"
            if t.dim() != 2 or t.shape[1] != ls.hidden_size or (ref is not None and t.shape[0] != ref.shape[0]):
                raise StateError(
                    f"{where}: expected shape ({batch}, hidden={ls.hidden_size}), got {_shape_str(t.shape)}"
                )
            if t.shape[0] == 0:
                raise StateError(f"{where}: a State has at least one row, got {_shape_str(t.shape)}")
            if not t.dtype.is_floating_point:
                raise StateError(f"{where}: expected a floating dtype, got {t.dtype}")
            if ref is not None and t.dtype != ref.dtype:
                raise StateError(f"{where}: dtype {t.dtype} differs from layer 0 `h`'s {ref.dtype}")
            if ref is not None and t.device != ref.device:
                raise StateError(f"{where}: device {t.device} differs from layer 0 `h`'s {ref.device}")
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise StateError(f"{where}: contains NaN or inf ({bad} non-finite values)")
            if ref is None:
                ref = t

"""Stateful: the one place in hiddenstate that carries a state between calls.

Everything else is explicit, ``y, state = model(x, state)``; this wrapper keeps ``state`` for the
caller, the way Keras's ``stateful=True`` promises to, with a validated ``set_state`` and a
per-row ``reset_state``.
"""

from __future__ import annotations

import torch
from torch import nn

from hiddenstate.errors import ConfigError, ShapeError, StateError
from hiddenstate.model import SequenceModel, StackedRNN, _shape
from hiddenstate.state import State, StateSpec

__all__ = ["Stateful"]


class Stateful(nn.Module):
    """Keras ``stateful=True`` done right: carries the state of ``model`` across calls.

    ``y = wrapper(x)`` runs ``model(x, wrapper.state)`` and keeps the new state, detached from
    the graph (gradients stop at the call boundary, as in truncated BPTT). For a model built with
    ``state_encoder="cond:N"``, ``wrapper(x, cond=cond)`` instead sets the state from ``cond``
    (the previous true values) for this call, with gradients into the encoder. Row i of every call
    must continue row i of the previous one, so the batch size is fixed at ``batch_size``.

    ``.state`` is read-only; replace it with :meth:`set_state`, which validates, and clear rows
    with :meth:`reset_state`. This wrapper is the one object in hiddenstate that changes a
    state between calls.

    >>> import torch, hiddenstate as hs
    >>> w = hs.Stateful(hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(8)]), batch_size=10)
    >>> y = w(torch.zeros(10, 96, 2))
    >>> w.state.batch_size
    10
    """

    def __init__(self, model: SequenceModel | StackedRNN, batch_size: int) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self._carried: State | None = None

    @property
    def state_spec(self) -> StateSpec:
        return self.model.state_spec

    @property
    def state(self) -> State:
        """The carried state (zeros or the model's initial state before the first call)."""
        if self._carried is None:
            self._carried = self._initial(None)
        return self._carried

    @state.setter
    def state(self, value: object) -> None:
        raise AttributeError("Stateful.state is read-only; use set_state(state) or set_state(layer=i, h=..., c=...)")

    def _initial(self, cond: torch.Tensor | None) -> State:
        if isinstance(self.model, SequenceModel):
            if self.model.encoder is not None and cond is None:
                p = self.model.head.weight
                return State.zeros(self.state_spec, self.batch_size, dtype=p.dtype, device=p.device)
            return self.model.initial_state(self.batch_size, cond).detach()
        p = next(self.model.parameters())
        return State.zeros(self.state_spec, self.batch_size, dtype=p.dtype, device=p.device)

    def forward(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"x: expected shape (batch={self.batch_size}, steps, input), got {got}")
        if x.shape[0] != self.batch_size:
            raise StateError(
                f"Stateful(batch_size={self.batch_size}) got a batch of {x.shape[0]} rows; row i of each "
                "call continues row i of the previous one, so the batch size is fixed"
            )
        if cond is not None:
            if not (isinstance(self.model, SequenceModel) and self.model.encoder is not None):
                raise ConfigError(
                    "cond= sets the state through a state encoder, and this model has none; "
                    "build it with SequenceModel(..., state_encoder='cond:N')"
                )
            # Set the state from the conditioning vector for this call; gradients reach the encoder.
            start = self.model.initial_state(self.batch_size, cond)
        else:
            start = self.state
        y, new = self.model(x, start)
        self._carried = new.detach()
        return y

    def set_state(
        self,
        state: State | None = None,
        *,
        layer: int | None = None,
        h: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
        broadcast: bool = False,
    ) -> None:
        """Replace the carried state, validated: a whole State, or one layer's ``h``/``c``."""
        if state is not None:
            if layer is not None or h is not None or c is not None:
                raise StateError("set_state takes either a whole state or layer=, h=, c=, not both")
            if not isinstance(state, State):
                raise StateError(f"set_state: expected a State, got {type(state).__name__}")
            if state.spec != self.state_spec:
                raise StateError(
                    f"set_state: spec {state.spec.describe()} differs from the model's {self.state_spec.describe()}"
                )
            if state.batch_size != self.batch_size:
                raise StateError(f"set_state: state has batch {state.batch_size}, expected batch={self.batch_size}")
            p = next(self.model.parameters())
            if (state.dtype, state.device) != (p.dtype, p.device):
                raise StateError(
                    f"set_state: state is {state.dtype} on {state.device} but the model is {p.dtype} on "
                    f"{p.device}; convert it with state.to(device=..., dtype=...)"
                )
            self._carried = state
            return
        if layer is None or (h is None and c is None):
            raise StateError("set_state needs a State or layer=i with h= and/or c=")
        self._carried = self.state.replace(layer, h=h, c=c, broadcast=broadcast)

    def reset_state(self, mask: torch.Tensor | None = None) -> None:
        """Send every row (or the rows where ``mask`` is true) back to the initial state."""
        fresh = self._initial(None)
        if mask is None:
            self._carried = fresh
        else:
            self._carried = self.state.reset(mask, to=fresh)

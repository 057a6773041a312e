"""The default backend: each layer's sequence in one cuDNN/oneDNN kernel call.

:func:`rnn_kernel` is the call ``nn.LSTM.forward`` ends in (``torch._VF.lstm``/``gru``/``rnn_tanh``),
made with the cells' current parameters and without its per-call Python checks. On the CPU a run
of consecutive layers of one kind and size (:func:`layer_groups`) goes through one
``num_layers=k`` call, exactly as ``nn.LSTM(num_layers=k, dropout=p)`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hiddenstate.state import State, StateSpec

__all__ = ["hx_for_layers", "layer_groups", "rnn_kernel"]


def layer_groups(spec: StateSpec) -> list[tuple[int, int]]:
    groups: list[tuple[int, int]] = []
    for i, ls in enumerate(spec.layers):
        if groups and spec.layers[groups[-1][0]] == ls:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    return groups


def hx_for_layers(state: State | None, start: int, end: int, has_c: bool) -> Any:
    """The kernels' ``(layers, batch, hidden)`` initial state for layers ``start .. end-1``:
    contiguous, as cuDNN refuses the expanded views that broadcast and learned states are."""
    if state is None:
        return None
    layers = state.layers[start:end]
    if end - start == 1:
        h = layers[0].h.unsqueeze(0).contiguous()
        return (h, layers[0].c.unsqueeze(0).contiguous()) if has_c else h  # type: ignore[union-attr]
    h = torch.stack([ls.h for ls in layers])
    return (h, torch.stack([ls.c for ls in layers])) if has_c else h  # type: ignore[misc]


_KERNELS = {"gru": "gru", "rnn": "rnn_tanh"}


def rnn_kernel(kind: str, cells: Sequence[nn.RNNBase], x: torch.Tensor, hx: Any, p: float) -> tuple[torch.Tensor, Any]:
    """``nn.LSTM``/``GRU``/``RNN`` over ``x`` for a run of single-layer cells of one kind and
    size, as one ``num_layers=len(cells)`` call with dropout ``p`` between them."""
    weights: list[torch.Tensor] = []
    for cell in cells:
        params = cell._parameters  # what functional_call swaps too; cheaper than _update_flat_weights()
        try:
            weights += [params[name] for name in cell._flat_weights_names]  # type: ignore[misc]
        except KeyError:  # a parametrized weight: let the module find it
            cell._update_flat_weights()
            weights += cell._flat_weights  # type: ignore[arg-type]
    training = cells[0].training
    if hx is None:
        zeros = x.new_zeros(len(cells), x.shape[0], cells[0].hidden_size)
        hx = (zeros, zeros) if kind == "lstm" else zeros
    if kind == "lstm":
        out, h, c = torch._VF.lstm(x, hx, weights, cells[0].bias, len(cells), p, training, False, True)
        return out, (h, c)
    out, h = getattr(torch._VF, _KERNELS[kind])(x, hx, weights, cells[0].bias, len(cells), p, training, False, True)
    return out, h

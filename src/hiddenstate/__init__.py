"""hiddenstate: stateful LSTM/GRU stacks whose hidden state belongs to the user.

    >>> import torch, hiddenstate as hs
    >>> model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)])
    >>> y, state = model(torch.zeros(10, 96, 2))
    >>> state.spec.state_size
    ((8, 8), (16, 16))
"""

from __future__ import annotations

from .errors import (
    CheckpointError,
    ConfigError,
    ContinuityError,
    DataError,
    HiddenStateError,
    ShapeError,
    StateError,
)
from .model import GRU, LSTM, RNN, LearnedInitialState, SequenceModel, StackedRNN, StateEncoder, Stateful
from .state import LayerSpec, LayerState, State, StateSpec

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "CheckpointError",
    "ConfigError",
    "ContinuityError",
    "DataError",
    "HiddenStateError",
    "LayerSpec",
    "LayerState",
    "LearnedInitialState",
    "SequenceModel",
    "ShapeError",
    "StackedRNN",
    "State",
    "StateEncoder",
    "StateError",
    "StateSpec",
    "Stateful",
    "__version__",
]

"""hiddenstate: stateful LSTM/GRU stacks whose hidden state belongs to the user.

>>> import torch, hiddenstate as hs
>>> model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.LSTM(16)])
>>> y, state = model(torch.zeros(10, 96, 2))
>>> state.spec.state_size
((8, 8), (16, 16))
"""

from __future__ import annotations

from hiddenstate.errors import (
    CheckpointError,
    ConfigError,
    ContinuityError,
    DataError,
    ExportError,
    HiddenStateError,
    MissingExtraError,
    SequenceGapError,
    ServeError,
    ShapeError,
    StateError,
    StreamNotFoundError,
    VersionConflictError,
)
from hiddenstate.model import (
    GRU,
    LSTM,
    RNN,
    LearnedInitialState,
    SequenceModel,
    StackedRNN,
    StateEncoder,
    build_model,
)
from hiddenstate.state import LayerSpec, LayerState, State, StateSpec
from hiddenstate.stateful import Stateful

__version__ = "0.1.0"

# The pipeline's names load on first use, so `import hiddenstate` stays light for the core.
_LAZY = {
    "Batch": "hiddenstate.data.lanes",
    "StatefulBatches": "hiddenstate.data.lanes",
    "WindowSampler": "hiddenstate.data.lanes",
    "check_continuity": "hiddenstate.data.lanes",
    "Dataset": "hiddenstate.data.frames",
    "Series": "hiddenstate.data.frames",
    "read_dataset": "hiddenstate.data.frames",
    "Split": "hiddenstate.data.frames",
    "StandardScaler": "hiddenstate.data.scaling",
    "synthetic_dataset": "hiddenstate.data.synthetic",
    "TrainConfig": "hiddenstate.train",
    "Trainer": "hiddenstate.train",
    "Run": "hiddenstate.runs",
    "load_run": "hiddenstate.runs",
    "save_run": "hiddenstate.runs",
    "keras": "hiddenstate.interop",  # the subpackage hiddenstate.interop.keras (Keras itself loads on use)
    "export_onnx": "hiddenstate.interop.onnx",
    "sample_paths": "hiddenstate.paths",
    "Forecaster": "hiddenstate.forecaster",
}
# Submodules reachable as attributes before they are imported: ``hs.metrics.crps(...)``.
_LAZY_SUBMODULES = ("metrics",)

_SUBPACKAGES = {"keras"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"hiddenstate.{name}")
    if module is None:
        raise AttributeError(f"module 'hiddenstate' has no attribute {name!r}")
    import importlib

    parent = importlib.import_module(module)
    if not hasattr(parent, name) and name in _SUBPACKAGES:
        importlib.import_module(f"{module}.{name}")  # a subpackage, e.g. hs.keras
    value = getattr(parent, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_SUBMODULES))


__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "CheckpointError",
    "ConfigError",
    "ContinuityError",
    "DataError",
    "ExportError",
    "HiddenStateError",
    "MissingExtraError",
    "SequenceGapError",
    "ServeError",
    "StreamNotFoundError",
    "VersionConflictError",
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
    "build_model",
    *_LAZY,
    *_LAZY_SUBMODULES,
]

"""Every exception hiddenstate raises on purpose.

The hierarchy::

    HiddenStateError                  base of all of them; catch this to catch ours
    ├── StateError(ValueError)        a State that does not fit its StateSpec: layer count,
    │                                 h/c presence, shape, dtype, device, NaN/inf
    ├── ShapeError(ValueError)        an input tensor (x, cond, mask) of the wrong shape
    ├── ConfigError(ValueError)       a configuration value that cannot work
    ├── DataError(ValueError)         a data file or frame that cannot be read as asked;
    │                                 names the file, the column and the row
    ├── ContinuityError(ValueError)   stateful batches whose row i does not continue row i
    ├── CheckpointError               a run directory that is missing, tampered, truncated
    │                                 or does not match the model; names the file
    ├── MissingExtraError(ImportError) an optional dependency is absent; names the extra
    ├── ExportError                   an exported graph that does not match its model; names
    │                                 the tensor, the check and the difference
    └── ServeError                    the streaming service's failures
        ├── SequenceGapError          an observe whose seq is not the next one
        ├── StreamNotFoundError       a stream the store does not hold
        └── VersionConflictError      a compare-and-set that lost the race

Each message says what is wrong and where, in one line.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContinuityError",
    "DataError",
    "ExportError",
    "HiddenStateError",
    "MissingExtraError",
    "SequenceGapError",
    "ServeError",
    "ShapeError",
    "StateError",
    "StreamNotFoundError",
    "VersionConflictError",
]


class HiddenStateError(Exception):
    """Base class of every error hiddenstate raises on purpose."""


class StateError(HiddenStateError, ValueError):
    """A State does not fit its StateSpec (layers, h/c, shape, dtype, device, finiteness)."""


class ShapeError(HiddenStateError, ValueError):
    """An input tensor such as ``x``, ``cond`` or a reset mask has the wrong shape."""


class ConfigError(HiddenStateError, ValueError):
    """A configuration value that cannot work (unknown cell kind, negative size, ...)."""


class DataError(HiddenStateError, ValueError):
    """A data file or frame cannot be read as asked; the message names file, column and row."""


class ContinuityError(HiddenStateError, ValueError):
    """Stateful batches break the lane contract; the message names the batch and the row."""


class CheckpointError(HiddenStateError):
    """A run directory or checkpoint file is missing, tampered, truncated or mismatched."""


class MissingExtraError(HiddenStateError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is not installed: pip install 'hiddenstate[{extra}]'")


class ServeError(HiddenStateError):
    """Base class of the streaming service's errors."""


class SequenceGapError(ServeError):
    """An observe carried a seq that is neither the next one nor a repeat of the last one."""

    def __init__(self, stream_id: str, expected: int, got: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.got = got
        super().__init__(f"stream {stream_id!r}: expected seq {expected}, got {got}")


class StreamNotFoundError(ServeError):
    """The store holds no record for this stream."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} not found")


class VersionConflictError(ServeError):
    """A compare-and-set found another version than the one it read."""


class ExportError(HiddenStateError):
    """An exported graph does not reproduce its model; names the tensor, the check and by how much."""

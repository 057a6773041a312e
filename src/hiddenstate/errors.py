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
        ├── MalformedRequestError     a body that is not JSON, or nested too deeply
        ├── BodyTooLargeError         a body over the service's limit
        ├── UnsupportedMediaTypeError a body sent as anything but JSON (a form, text/plain)
        ├── SequenceGapError          an observe whose seq is not the next one
        ├── ReplayConflictError       a repeated seq whose body differs from the applied one
        ├── NonFiniteError            the model turned a stream's state or output into NaN/inf
        ├── StreamNotFoundError       a stream the store does not hold
        ├── VersionConflictError      a compare-and-set that lost the race
        ├── StoreUnavailableError     the state store cannot be reached or cannot write (503)
        │   └── StoreBusyError        a compare-and-set lost its bounded number of tries
        └── RequestError              a refusal as a client hears it: status, code, detail

One table of errors: each class carries its HTTP status (``http_status``), its stable error
code (``code``, the ``error`` field of a JSON error body) and its command-line exit code
(``exit_code``: 2 for a usage error, 1 otherwise; click's own usage errors are the 2s). The
HTTP app, the client and the command line read them from here; :func:`error_for_code` goes
from a code back to its class.

>>> SequenceGapError.http_status, SequenceGapError.code, SequenceGapError.exit_code
(409, 'sequence_gap', 1)
>>> error_for_code("not_found").__name__
'StreamNotFoundError'

Each message says what is wrong and where, in one line.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BodyTooLargeError",
    "CheckpointError",
    "ConfigError",
    "ContinuityError",
    "DataError",
    "ExportError",
    "HiddenStateError",
    "MalformedRequestError",
    "MissingExtraError",
    "NonFiniteError",
    "ReplayConflictError",
    "RequestError",
    "SequenceGapError",
    "ServeError",
    "ShapeError",
    "StateError",
    "StoreBusyError",
    "StoreUnavailableError",
    "StreamNotFoundError",
    "VersionConflictError",
    "error_for_code",
]


class HiddenStateError(Exception):
    """Base class of every error hiddenstate raises on purpose.

    ``http_status``, ``code`` and ``exit_code`` are what the service answers and what the
    command line exits with for this class (see the module docstring).
    """

    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1


class StateError(HiddenStateError, ValueError):
    """A State does not fit its StateSpec (layers, h/c, shape, dtype, device, finiteness)."""

    http_status, code = 422, "invalid"


class ShapeError(HiddenStateError, ValueError):
    """An input tensor such as ``x``, ``cond`` or a reset mask has the wrong shape."""

    http_status, code = 422, "invalid"


class ConfigError(HiddenStateError, ValueError):
    """A configuration value that cannot work (unknown cell kind, negative size, ...)."""

    http_status, code = 422, "invalid"


class DataError(HiddenStateError, ValueError):
    """A data file or frame cannot be read as asked; the message names file, column and row."""

    http_status, code = 422, "invalid"


class ContinuityError(HiddenStateError, ValueError):
    """Stateful batches break the lane contract; the message names the batch and the row."""

    http_status, code = 422, "invalid"


class CheckpointError(HiddenStateError):
    """A run directory or checkpoint file is missing, tampered, truncated or mismatched."""

    code = "checkpoint"


class MissingExtraError(HiddenStateError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    code = "missing_extra"

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is not installed: pip install 'hiddenstate[{extra}]'")


class ServeError(HiddenStateError):
    """Base class of the streaming service's errors."""

    http_status, code = 409, "conflict"


class MalformedRequestError(ServeError):
    """A request body that is not JSON (or is nested too deeply to read)."""

    http_status, code = 400, "malformed_json"


class BodyTooLargeError(ServeError):
    """A request body over the service's limit, counted on the bytes received."""

    http_status, code = 413, "too_large"


class UnsupportedMediaTypeError(ServeError):
    """A request body sent with a Content-Type other than JSON (``application/json`` or a
    ``+json`` type). A missing Content-Type is read as JSON."""

    http_status, code = 415, "unsupported_media_type"


class SequenceGapError(ServeError):
    """An observe carried a seq that is neither the next one nor a repeat of the last one."""

    code = "sequence_gap"

    def __init__(self, stream_id: str, expected: int, got: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.got = got
        super().__init__(f"stream {stream_id!r}: expected seq {expected}, got {got}")


class ReplayConflictError(ServeError):
    """A repeated seq whose values or horizon differ from the observe applied under it, or one
    set by a PUT (which has no answer to repeat)."""

    code = "replay_conflict"


class NonFiniteError(ServeError):
    """The model turned a stream's state or output into NaN or inf; nothing was stored."""

    http_status, code = 422, "nonfinite"


class StreamNotFoundError(ServeError):
    """The store holds no record for this stream."""

    http_status, code = 404, "not_found"

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} not found")


class VersionConflictError(ServeError):
    """A compare-and-set found another version than the one it read."""

    code = "version_conflict"


class ExportError(HiddenStateError):
    """An exported graph does not reproduce its model; names the tensor, the check and by how much."""

    code = "export_failed"


class StoreUnavailableError(ServeError):
    """The state store cannot be reached, or cannot take a write (a full disk, an I/O error, a
    Redis that is down or below the durability asked for). Every backend maps its own errors
    (``sqlite3.Error``, ``redis.RedisError``) to this one at its boundary; nothing was changed.

    ``store`` is the store's URL (passwords masked), ``reason`` the backend's one-line cause and
    ``retry_after`` the seconds a client should wait (the HTTP ``Retry-After`` header).
    """

    http_status, code = 503, "store_unavailable"
    retry_after: ClassVar[int] = 1

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"the state store {store} is unavailable: {self.reason}")


class StoreBusyError(StoreUnavailableError):
    """A compare-and-set kept losing to other writers for its whole, bounded number of tries."""

    code = "store_busy"


class RequestError(ServeError):
    """The service refused a request, as the client hears it: ``status`` is the HTTP status,
    ``error`` its stable code and ``kind`` the class of that code (None for an unknown one)."""

    def __init__(self, status: int, error: str, detail: str, expected_seq: int | None = None) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        self.expected_seq = expected_seq
        super().__init__(f"{status} {error}: {detail}")

    @property
    def kind(self) -> type[HiddenStateError] | None:
        return error_for_code(self.error)


def _table() -> dict[str, type[HiddenStateError]]:
    found: dict[str, type[HiddenStateError]] = {}
    todo: list[type[HiddenStateError]] = [HiddenStateError]
    while todo:
        cls = todo.pop(0)
        found.setdefault(cls.code, cls)  # the most general class of a code: "invalid" is StateError's
        todo += cls.__subclasses__()
    return found


def error_for_code(code: str) -> type[HiddenStateError] | None:
    """The class that answers with the error code ``code``, or None for a code this version does not know."""
    return _CODES.get(code)


_CODES = _table()

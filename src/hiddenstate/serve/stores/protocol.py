"""The state store's contract: one record per stream, written by compare-and-set.

A store maps a stream id to one :class:`Record`. Every write is a compare-and-set on the
record's ``version``: it applies only if the stored version is still the one the writer read
(``0`` for a stream that does not exist yet). Versions are random 53-bit tokens, not counters,
so a stream deleted and created again never reuses a version a slow writer may still hold
(no ABA). One :meth:`StateStore.write` call is one transaction: the service commits a whole
micro-batch at once (group commit), and each write in it succeeds or fails on its own.

Failures cross the boundary as one error: a backend maps its own (``sqlite3.Error``,
``redis.RedisError``) to :class:`~hiddenstate.errors.StoreUnavailableError` with
:func:`unavailable`, so nothing above the store names a backend's exceptions. A write that
raised changed nothing. Each backend is one module implementing :class:`StateStore`; nothing
outside ``serve/stores/`` checks which class a store is: what differs is in
:meth:`StateStore.durability`, :attr:`StateStore.local` and :meth:`StateStore.maintain`.

States are plain float32 bytes: every tensor of ``State.to_dict()`` for one row, in the order
of ``StateSpec.names``, end to end. The store's ``meta`` pins the spec fingerprint and the
model's input and target columns (the layout of the last row, prediction and forecast), so bytes
are never read back with another layout. Nothing here unpickles anything.
"""

from __future__ import annotations

import functools
import hashlib
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from hiddenstate.errors import ConfigError, StoreUnavailableError

__all__ = [
    "DURABILITY_MODES",
    "Durability",
    "Record",
    "StateStore",
    "Write",
    "check_durability_mode",
    "new_version",
    "record_digest",
    "unavailable",
]

#: ``strict``: refuse a backend that would not keep an acknowledged write through a crash of the
#: machine; ``relaxed``: run on it anyway (and say so in /healthz and /metrics).
DURABILITY_MODES = ("strict", "relaxed")


# Versions need to be unique, not secret: a fast generator seeded from the OS is enough.
_versions = random.Random(secrets.randbits(128))


def new_version() -> int:
    """A fresh random version token in ``[1, 2**53)``, exact in JSON numbers everywhere."""
    return _versions.getrandbits(53) or 1


class Record(NamedTuple):
    """One stream as stored.

    ``state`` is the float32 state (``spec.names`` order); ``tail`` the float32 last observed
    row and last prediction, both normalised (what a rollout continues from; None after a PUT);
    ``forecast`` the float32 forecast ``(horizon, n_targets)`` the last observe asked for (None
    without a horizon) and ``digest`` a hash of that observe's body: a repeated seq replays the
    answer from these, bit for bit. ``updated`` is the unix time of the write (a TTL counts from it).
    """

    seq: int
    version: int
    state: bytes
    tail: bytes | None = None
    forecast: bytes | None = None
    digest: bytes | None = None
    updated: float = 0.0


class Write(NamedTuple):
    """Set (``record``) or delete (``record=None``) a stream if its version is ``expected``."""

    stream_id: str
    expected: int
    record: Record | None


@dataclass(frozen=True)
class Durability:
    """What an acknowledged write survives, as the backend reports it.

    ``durable`` is true when it survives a crash of the machine (a power cut): SQLite with
    ``synchronous=FULL``, Redis with ``appendonly yes`` and ``appendfsync always``. ``mode`` is
    the ``--durability`` the store was opened with; ``settings`` the backend's own values.

    >>> Durability("relaxed", False, {"appendfsync": "everysec"}).to_json()
    {'mode': 'relaxed', 'durable': False, 'appendfsync': 'everysec'}
    """

    mode: str
    durable: bool
    settings: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "durable": self.durable, **self.settings}


def check_durability_mode(mode: str) -> str:
    if mode not in DURABILITY_MODES:
        raise ConfigError(f"unknown durability {mode!r}; expected one of {', '.join(DURABILITY_MODES)}")
    return mode


_F = TypeVar("_F", bound=Callable[..., Any])


def unavailable(*errors: type[BaseException]) -> Callable[[_F], _F]:
    """Decorate a store method: the backend's ``errors`` leave it as :class:`StoreUnavailableError`
    naming the store's URL and the cause in one line (the original stays as ``__cause__``)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def mapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except errors as e:
                raise StoreUnavailableError(self.url, str(e) or type(e).__name__) from e

        return mapped  # type: ignore[return-value]

    return wrap


@runtime_checkable
class StateStore(Protocol):
    """The backend protocol; see the module docstring for the contract.

    Every method raises :class:`~hiddenstate.errors.StoreUnavailableError` when the backend
    fails, never the backend's own exceptions. ``local`` is true for a store in this machine's
    files (its calls are short enough to run on the event loop); false for a network store.
    """

    url: str
    ttl: float | None
    local: bool

    def read(self, ids: Sequence[str]) -> dict[str, Record]:
        """The records of those ids that exist (and have not expired)."""
        ...

    def write(self, writes: Sequence[Write]) -> list[bool]:
        """Apply every write whose expected version holds, in one transaction; which applied.

        The ids of one call are distinct.
        """
        ...

    def init_meta(self, meta: Mapping[str, str]) -> dict[str, str]:
        """Store ``meta`` if the store has none yet; return the meta the store holds."""
        ...

    def count(self) -> int:
        """How many streams the store holds."""
        ...

    def checksum(self) -> str:
        """A sha256 of every record and the meta, in id order; equal iff the contents are."""
        ...

    def sweep(self) -> int:
        """Delete expired streams now (when a TTL is set); how many went."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailableError when the store cannot be reached."""
        ...

    def durability(self) -> Durability:
        """What an acknowledged write survives, read from the backend now."""
        ...

    def maintain(self) -> None:
        """Housekeeping off the request path, called every half second (SQLite checkpoints its WAL)."""
        ...

    def close(self) -> None: ...


def record_digest(parts: Iterable[Mapping[str, object]]) -> str:
    """Hash records given as dicts of their fields (id order), for the stores' checksums."""
    h = hashlib.sha256()
    for fields in parts:
        for key in sorted(fields):
            value = fields[key]
            raw = value if isinstance(value, bytes) else repr(value).encode()
            h.update(key.encode() + b"=" + len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()

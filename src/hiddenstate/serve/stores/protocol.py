"""The state store's contract: one record per stream, written by compare-and-set.

A store maps a stream id to one :class:`Record`. Every write is a compare-and-set on the
record's ``version``: it applies only if the stored version is still the one the writer read
(``0`` for a stream that does not exist yet). Versions are random 53-bit tokens, not counters,
so a stream deleted and created again never reuses a version a slow writer may still hold
(no ABA). One :meth:`StateStore.write` call is one transaction: the service commits a whole
micro-batch at once (group commit), and each write in it succeeds or fails on its own.

States are plain float32 bytes: every tensor of ``State.to_dict()`` for one row, in the order
of ``StateSpec.names``, end to end. The store's ``meta`` pins the spec fingerprint, so bytes
are never read back with another layout. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Record", "StateStore", "Write", "new_version", "record_digest"]


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


@runtime_checkable
class StateStore(Protocol):
    """The backend protocol; see the module docstring for the contract."""

    url: str
    ttl: float | None

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
        """Raise when the store cannot be reached."""
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

"""State stores: the protocol, and its backends chosen by URL scheme.

Backends: :class:`~hiddenstate.serve.stores.sqlite.SQLiteStore` (``sqlite:///path/states.db``,
the default, WAL mode with ``synchronous=FULL``) and
:class:`~hiddenstate.serve.stores.redis.RedisStore` (``redis://host:port/db``, for several
replicas sharing one store). Each backend is one module; nothing outside this package names one.
"""

from __future__ import annotations

from hiddenstate.errors import ConfigError
from hiddenstate.serve.stores.protocol import (
    DURABILITY_MODES,
    Durability,
    Record,
    StateStore,
    Write,
    check_durability_mode,
    new_version,
    record_digest,
)

__all__ = [
    "DURABILITY_MODES",
    "Durability",
    "Record",
    "StateStore",
    "Write",
    "new_version",
    "open_store",
    "record_digest",
]


def open_store(url: str, *, ttl: float | None = None, sync: str = "full", durability: str = "strict") -> StateStore:
    """A store from its URL: ``sqlite:///abs/path.db``, ``sqlite://rel/path.db`` or ``redis://host:port/db``.

    A plain path (no scheme) is a SQLite file. ``sync`` applies to SQLite only (``normal`` is
    itself the relaxed choice). With ``durability="strict"`` a Redis whose ``appendonly`` and
    ``appendfsync`` are weaker than ``yes``/``always`` is refused, at startup and on every
    reconnect; ``"relaxed"`` runs on it. Redis URLs may end in ``?prefix=name:`` to keep
    several services apart in one database. Backend failures raise StoreUnavailableError.
    """
    if ttl is not None and not ttl > 0:
        raise ConfigError(f"ttl must be a positive number of seconds, got {ttl}")
    check_durability_mode(durability)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from hiddenstate.serve.stores.redis import RedisStore

        return RedisStore(url, ttl=ttl, durability=durability)
    if "://" in url and not url.startswith("sqlite://"):
        raise ConfigError(f"unknown store URL {url!r}; expected sqlite:///path.db or redis://host:port/db")
    path = url[len("sqlite://") :] if url.startswith("sqlite://") else url
    if not path:
        raise ConfigError(f"store URL {url!r} names no file; expected sqlite:///path/states.db")
    from hiddenstate.serve.stores.sqlite import SQLiteStore

    return SQLiteStore(path, ttl=ttl, sync=sync, durability=durability)

"""The Redis backend of the state store: several replicas of the service share one Redis.

Each stream is a hash at ``{prefix}s:{id}`` with two fields: ``v``, its version, and ``r``, the
whole :class:`~.store.Record` packed into one binary value (a fixed header, then the blobs), so
that reading 1,000 streams parses 1,000 values, not 7,000. The meta is a hash at
``{prefix}meta``. Reads and a micro-batch's writes are one Lua script each, which Redis runs
atomically; the write script checks each stream's version before it sets or deletes it
(compare-and-set). A TTL is Redis's own key expiry, renewed on every write.

Durability is Redis's: an acknowledged write survives a crash of Redis only with
``appendonly yes`` and ``appendfsync always`` (see docs/serving.md). The store reads both on
every connection it opens, at startup and after every reconnect (a Redis restarted with
another configuration is caught there). Below that it refuses to connect unless it was
opened with ``durability="relaxed"``. :meth:`RedisStore.durability` reports what it found.
Every ``redis.RedisError`` leaves this module as :class:`~hiddenstate.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError
from hiddenstate.serve.stores.protocol import (
    Durability,
    Record,
    Write,
    check_durability_mode,
    record_digest,
    unavailable,
)

if TYPE_CHECKING:
    import redis
else:
    redis = require("redis", "serve")

__all__ = ["RedisStore", "pack_record", "unpack_record"]

_READ_SCRIPT = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], 'r') or false end
return out
"""

# KEYS: one per write. ARGV[1]: ttl in ms (0 for none); then per write: the expected version,
# the new version ("" to delete) and the packed record.
_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 3
  local cur = redis.call('HGET', KEYS[i], 'v') or '0'
  if cur ~= ARGV[base] then
    out[i] = 0
  elseif ARGV[base + 1] == '' then
    redis.call('DEL', KEYS[i])
    out[i] = 1
  else
    redis.call('HSET', KEYS[i], 'v', ARGV[base + 1], 'r', ARGV[base + 2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
    out[i] = 1
  end
end
return out
"""

_HEADER = struct.Struct("<qqdiiii")  # seq, version, updated, then the length of each blob (-1: None)


def pack_record(r: Record) -> bytes:
    """One Record as bytes: the header, then state, tail, forecast and digest end to end.

    >>> r = Record(3, 7, b"ab", None, b"f", b"d", 1.5)
    >>> unpack_record(pack_record(r)) == r
    True
    """
    blobs = (r.state, r.tail, r.forecast, r.digest)
    sizes = [-1 if b is None else len(b) for b in blobs]
    return _HEADER.pack(r.seq, r.version, r.updated, *sizes) + b"".join(b for b in blobs if b)


def unpack_record(data: bytes) -> Record:
    seq, version, updated, *sizes = _HEADER.unpack_from(data)
    at, blobs = _HEADER.size, []
    for size in sizes:
        blobs.append(None if size < 0 else data[at : at + size])
        at += max(size, 0)
    return Record(seq, version, blobs[0] or b"", blobs[1], blobs[2], blobs[3], updated)


class RedisStore:
    """Streams as Redis hashes; a micro-batch's writes in one atomic Lua script.

    ``url`` is ``redis://host:port/db`` (any URL ``redis.Redis.from_url`` takes), optionally
    with ``?prefix=name:`` (default ``hiddenstate:``) to keep several services apart.
    ``durability`` is ``strict`` (refuse a server below ``appendonly yes``/``appendfsync always``)
    or ``relaxed``; the server is checked on every connection the client opens.
    """

    local = False

    def __init__(self, url: str, *, ttl: float | None = None, durability: str = "strict") -> None:
        self.mode = check_durability_mode(durability)
        self._seen = Durability(self.mode, False, {})  # what the last connection (or maintain) found
        self._stop_writes: str | None = None  # strict mode: why writes are refused since maintain's last look
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = (query.pop("prefix", ["hiddenstate:"]) or ["hiddenstate:"])[0]
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self.url = url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url
        self.ttl = ttl
        try:
            self._redis = redis.Redis.from_url(
                clean,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=0,
                redis_connect_func=self._on_connect,
            )
        except ValueError as e:
            raise ConfigError(f"store URL {url!r}: {e}") from None
        self._write = self._redis.register_script(_WRITE_SCRIPT)
        self._read = self._redis.register_script(_READ_SCRIPT)
        self._stream_prefix = f"{self.prefix}s:"

    def _settings(self, pairs: dict[Any, Any]) -> tuple[Durability, str | None]:
        """What the AOF settings ``pairs`` mean: the durability, and in strict mode why writes must stop."""
        pairs = {_text(k): _text(v) for k, v in pairs.items()}
        settings = {k: pairs.get(k, "?") for k in ("appendonly", "appendfsync")}
        durable = settings["appendonly"] == "yes" and settings["appendfsync"] == "always"
        why = None
        if not durable and self.mode == "strict":
            why = (
                f"Redis runs with appendonly={settings['appendonly']} appendfsync={settings['appendfsync']}: an "
                "acknowledged update would not survive a crash of Redis; set appendonly yes and appendfsync always, "
                "or serve with --durability relaxed"
            )
        return Durability(self.mode, durable, settings), why

    def _on_connect(self, conn: Any) -> None:
        """Each new connection: the usual handshake, then read the server's AOF settings and refuse
        them, in strict mode, when an acknowledged write would not survive a crash of Redis."""
        conn.on_connect()
        try:
            conn.send_command("CONFIG", "GET", "append*")
            reply = conn.read_response()
            # a map under RESP3, a flat list of names and values under RESP2
            pairs = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
            self._seen, why = self._settings(pairs)
        except redis.ResponseError as e:  # CONFIG renamed or refused, as on some managed services
            self._seen, why = self._settings({"appendonly": "unknown", "appendfsync": "unknown"})
            self._seen.settings["config"] = _text(str(e))
        if why is not None:
            raise _NotDurable(why)

    def _key(self, stream_id: str) -> str:
        return self._stream_prefix + stream_id

    @unavailable(redis.RedisError)
    def read(self, ids: Sequence[str]) -> dict[str, Record]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        values = self._read(keys=[self._key(sid) for sid in unique])
        return {sid: unpack_record(v) for sid, v in zip(unique, values, strict=True) if v is not None}

    @unavailable(redis.RedisError)
    def write(self, writes: Sequence[Write]) -> list[bool]:
        if not writes:
            return []
        if self._stop_writes is not None:
            raise _NotDurable(self._stop_writes)
        keys: list[str] = []
        args: list[Any] = [int(self.ttl * 1000) if self.ttl else 0]
        for w in writes:
            keys.append(self._key(w.stream_id))
            if w.record is None:
                args += [str(w.expected), "", ""]
            else:
                args += [str(w.expected), str(w.record.version), pack_record(w.record)]
        return [bool(x) for x in self._write(keys=keys, args=args)]

    @unavailable(redis.RedisError)
    def init_meta(self, meta: Mapping[str, str]) -> dict[str, str]:
        key = f"{self.prefix}meta"
        pipe = self._redis.pipeline(transaction=True)
        for k, v in meta.items():
            pipe.hsetnx(key, k, v)
        pipe.hgetall(key)
        held = pipe.execute()[-1]
        return {k.decode(): v.decode() for k, v in held.items()}

    def _keys(self) -> list[bytes]:
        pattern = _glob_escape(self._stream_prefix) + "*"
        return sorted(self._redis.scan_iter(match=pattern, count=1000))

    @unavailable(redis.RedisError)
    def count(self) -> int:
        return len(self._keys())

    @unavailable(redis.RedisError)
    def checksum(self) -> str:
        keys = self._keys()
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        pipe.hgetall(f"{self.prefix}meta")
        values = pipe.execute()
        meta = {k.decode(): v for k, v in values[-1].items()}
        parts = [meta] + [
            {"id": key, **{k.decode(): v for k, v in h.items()}} for key, h in zip(keys, values[:-1], strict=True)
        ]
        return record_digest(parts)

    def sweep(self) -> int:
        return 0  # Redis expires keys itself

    @unavailable(redis.RedisError)
    def ping(self) -> None:
        self._redis.ping()

    def durability(self) -> Durability:
        """The server's ``appendonly`` and ``appendfsync`` as the last connection read them; connects
        first if no connection has been made (raising StoreUnavailableError when that fails)."""
        if not self._seen.settings:
            self.ping()
        return self._seen

    def maintain(self) -> None:
        """Re-read the AOF settings (the service calls this every half second): a ``CONFIG SET
        appendfsync no`` on a running Redis stops strict-mode writes (503) until it is undone, and
        ``/healthz`` reports what the server runs with now. Redis rewrites its AOF and expires keys itself."""
        try:
            pairs = self._redis.config_get("append*")
        except redis.ResponseError:  # CONFIG refused (managed services): what the connection read stands
            return
        except redis.RedisError:  # down: the requests themselves report it
            return
        self._seen, self._stop_writes = self._settings(pairs)

    def close(self) -> None:
        self._redis.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r}, ttl={self.ttl})"


class _NotDurable(redis.ConnectionError):
    """Raised while connecting, so that redis-py drops the connection and the call fails."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

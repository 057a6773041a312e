"""The Redis backend of the state store: several replicas of the service share one Redis.

Each stream is a hash at ``{prefix}s:{id}`` with the fields of :class:`~.store.Record`; the
meta is a hash at ``{prefix}meta``. Reads are one pipelined round trip; a micro-batch's writes
are one Lua script, which Redis runs atomically, checking each stream's version before it
sets or deletes it (compare-and-set). A TTL is Redis's own key expiry, renewed on every write.

Durability is Redis's: an acknowledged write survives a crash of Redis only with
``appendonly yes`` and ``appendfsync always`` (see docs/serving.md). :meth:`RedisStore.durability`
reports what the server is set to, and the service warns at startup when it is less.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis

from ..errors import ConfigError
from .store import Record, Write, record_digest

__all__ = ["RedisStore"]

_FIELDS = ("seq", "version", "state", "tail", "answer", "digest", "updated")

# KEYS: one per write. ARGV[1]: ttl in ms (0 for none); then 8 values per write: expected
# version, op ("s" set / "d" delete), and the seven record fields ("" for a missing blob).
_WRITE_SCRIPT = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 9
  local cur = redis.call('HGET', KEYS[i], 'version')
  if not cur then cur = '0' end
  if cur ~= ARGV[base] then
    out[i] = 0
  elseif ARGV[base + 1] == 'd' then
    redis.call('DEL', KEYS[i])
    out[i] = 1
  else
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'seq', ARGV[base + 2], 'version', ARGV[base + 3], 'state', ARGV[base + 4],
      'tail', ARGV[base + 5], 'answer', ARGV[base + 6], 'digest', ARGV[base + 7], 'updated', ARGV[base + 8])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    out[i] = 1
  end
end
return out
"""


def _blob(value: bytes | None) -> bytes:
    return b"" if value is None else value


def _unblob(value: bytes | None) -> bytes | None:
    return value if value else None


class RedisStore:
    """Streams as Redis hashes; a micro-batch's writes in one atomic Lua script.

    ``url`` is ``redis://host:port/db`` (any URL ``redis.Redis.from_url`` takes), optionally
    with ``?prefix=name:`` (default ``hiddenstate:``) to keep several services apart.
    """

    def __init__(self, url: str, *, ttl: float | None = None) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = (query.pop("prefix", ["hiddenstate:"]) or ["hiddenstate:"])[0]
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self.url = url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url
        self.ttl = ttl
        try:
            self._redis = redis.Redis.from_url(
                clean, socket_timeout=30, socket_connect_timeout=5, health_check_interval=0
            )
        except ValueError as e:
            raise ConfigError(f"store URL {url!r}: {e}") from None
        self._write = self._redis.register_script(_WRITE_SCRIPT)
        self._stream_prefix = f"{self.prefix}s:"

    def _key(self, stream_id: str) -> str:
        return self._stream_prefix + stream_id

    def read(self, ids: Sequence[str]) -> dict[str, Record]:
        unique = list(dict.fromkeys(ids))
        pipe = self._redis.pipeline(transaction=False)
        for sid in unique:
            pipe.hmget(self._key(sid), _FIELDS)
        out: dict[str, Record] = {}
        for sid, values in zip(unique, pipe.execute(), strict=True):
            if values[0] is None:
                continue
            seq, version, state, tail, answer, digest, updated = values
            out[sid] = Record(
                int(seq), int(version), state, _unblob(tail), _unblob(answer), _unblob(digest), float(updated)
            )
        return out

    def write(self, writes: Sequence[Write]) -> list[bool]:
        if not writes:
            return []
        keys: list[str] = []
        args: list[Any] = [int(self.ttl * 1000) if self.ttl else 0]
        for w in writes:
            keys.append(self._key(w.stream_id))
            r = w.record
            if r is None:
                args += [str(w.expected), "d", "", "", "", "", "", "", ""]
            else:
                args += [
                    str(w.expected),
                    "s",
                    str(r.seq),
                    str(r.version),
                    r.state,
                    _blob(r.tail),
                    _blob(r.answer),
                    _blob(r.digest),
                    repr(r.updated),
                ]
        return [bool(x) for x in self._write(keys=keys, args=args)]

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

    def count(self) -> int:
        return len(self._keys())

    def checksum(self) -> str:
        keys = self._keys()
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        pipe.hgetall(f"{self.prefix}meta")
        values = pipe.execute()
        meta = {k.decode(): v for k, v in values[-1].items()}
        parts = [meta] + [
            {"id": key, **{k.decode(): v for k, v in h.items()}} for key, h in zip(keys, values, strict=False)
        ]
        return record_digest(parts)

    def sweep(self) -> int:
        return 0  # Redis expires keys itself

    def ping(self) -> None:
        self._redis.ping()

    def durability(self) -> dict[str, str]:
        """The server's ``appendonly`` and ``appendfsync`` settings (empty if CONFIG is refused)."""
        try:
            found: dict[str, str] = {}
            for name in ("appendonly", "appendfsync"):
                found.update({str(k): str(v) for k, v in self._redis.config_get(name).items()})
            return found
        except redis.ResponseError:
            return {}

    def close(self) -> None:
        self._redis.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r}, ttl={self.ttl})"


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

"""The default state store: one SQLite file in WAL mode, ``synchronous=FULL`` by default.

Every ``sqlite3.DatabaseError`` (a full disk, an I/O error, a locked or damaged file) leaves
this module as :class:`~hiddenstate.errors.StoreUnavailableError`; a write that fails is
rolled back whole, so the file keeps what it held.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hiddenstate.errors import ConfigError
from hiddenstate.serve.stores.protocol import (
    Durability,
    Record,
    Write,
    check_durability_mode,
    record_digest,
    unavailable,
)

__all__ = ["SYNC_MODES", "SQLiteStore"]

SYNC_MODES = ("full", "normal")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    state BLOB NOT NULL,
    tail BLOB,
    forecast BLOB,
    digest BLOB,
    updated REAL NOT NULL
) WITHOUT ROWID;
"""
# Only a store with a TTL sweeps by update time; without one the index would cost every write
# (each changes ``updated``) about a fifth of its time for nothing.
_TTL_INDEX = "CREATE INDEX IF NOT EXISTS streams_updated ON streams (updated)"
_COLUMNS = "id, seq, version, state, tail, forecast, digest, updated"


_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


class SQLiteStore:
    """A SQLite file in WAL mode; ``sync="full"`` (default) fsyncs the WAL on every commit.

    With ``full`` an acknowledged write survives a crash of the process and of the machine.
    ``normal`` skips that fsync: it still survives the process being killed (the WAL is in the
    OS page cache) but a power cut or kernel crash may lose the last commits. Several processes
    may share the file; writes are serialised by ``BEGIN IMMEDIATE`` and made safe by the
    compare-and-set. Each thread gets its own connection.
    """

    local = True

    def __init__(
        self, path: str | Path, *, ttl: float | None = None, sync: str = "full", durability: str = "strict"
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"unknown sqlite sync mode {sync!r}; expected one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite://{path}"
        self.ttl = ttl
        self.sync = sync
        self.mode = check_durability_mode(durability)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.url}: folder {self.path.parent} does not exist")
        self._create()

    @unavailable(sqlite3.DatabaseError)
    def _create(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if self.ttl is not None:
                conn.execute(_TTL_INDEX)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.sync.upper()}")
            conn.execute("PRAGMA busy_timeout=30000")
            # The service checkpoints the WAL in the background (checkpoint()); this is only the safety net,
            # so that a commit rarely has to copy the WAL into the database on the request path.
            conn.execute("PRAGMA wal_autocheckpoint=20000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @unavailable(sqlite3.DatabaseError)
    def pragma(self, name: str) -> str:
        """A PRAGMA's current value on this thread's connection (``journal_mode``, ``synchronous``)."""
        return str(self._conn().execute(f"PRAGMA {name}").fetchone()[0])

    def _cutoff(self) -> float | None:
        return None if self.ttl is None else time.time() - self.ttl

    @unavailable(sqlite3.DatabaseError)
    def read(self, ids: Sequence[str]) -> dict[str, Record]:
        conn = self._conn()
        cutoff = self._cutoff()
        out: dict[str, Record] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_COLUMNS} FROM streams WHERE id IN ({marks})", chunk):
                if cutoff is not None and row[7] < cutoff:
                    continue  # expired; the next sweep or write deletes it
                out[row[0]] = Record._make(row[1:])
        return out

    @unavailable(sqlite3.DatabaseError)
    def write(self, writes: Sequence[Write]) -> list[bool]:
        if not writes:
            return []
        conn = self._conn()
        cutoff = self._cutoff()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if cutoff is not None:  # an expired row counts as absent, so a fresh stream may take its place
                ids = [w.stream_id for w in writes]
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM streams WHERE updated < ? AND id IN ({marks})", [cutoff, *chunk])
            ok = self._apply(conn, writes)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return ok

    @staticmethod
    def _apply(conn: sqlite3.Connection, writes: Sequence[Write]) -> list[bool]:
        """Every write of a batch; executemany per kind, then versions tell which ones held."""
        updates = [w for w in writes if w.record is not None and w.expected != 0]
        inserts = [w for w in writes if w.record is not None and w.expected == 0]
        deletes = [w for w in writes if w.record is None]
        changed = conn.executemany(
            "UPDATE streams SET seq = ?, version = ?, state = ?, tail = ?, forecast = ?, digest = ?, updated = ? "
            "WHERE id = ? AND version = ?",
            [(*w.record, w.stream_id, w.expected) for w in updates],  # type: ignore[misc]
        ).rowcount
        changed += conn.executemany(
            f"INSERT INTO streams ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            [(w.stream_id, *w.record) for w in inserts],  # type: ignore[misc]
        ).rowcount
        deleted = [
            conn.execute("DELETE FROM streams WHERE id = ? AND version = ?", (w.stream_id, w.expected)).rowcount == 1
            for w in deletes
        ]
        if changed == len(updates) + len(inserts):
            return [True if w.record is not None else deleted.pop(0) for w in writes]
        # Some compare-and-set lost: a write held where the row now carries its new version.
        ids = [w.stream_id for w in writes if w.record is not None]
        held: dict[str, int] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            held.update(conn.execute(f"SELECT id, version FROM streams WHERE id IN ({marks})", chunk).fetchall())
        return [held.get(w.stream_id) == w.record.version if w.record is not None else deleted.pop(0) for w in writes]

    @unavailable(sqlite3.DatabaseError)
    def init_meta(self, meta: Mapping[str, str]) -> dict[str, str]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", meta.items())
            held = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return held

    @unavailable(sqlite3.DatabaseError)
    def count(self) -> int:
        cutoff = self._cutoff()
        if cutoff is None:
            return int(self._conn().execute("SELECT COUNT(*) FROM streams").fetchone()[0])
        return int(self._conn().execute("SELECT COUNT(*) FROM streams WHERE updated >= ?", (cutoff,)).fetchone()[0])

    @unavailable(sqlite3.DatabaseError)
    def checksum(self) -> str:
        conn = self._conn()
        rows = conn.execute(f"SELECT {_COLUMNS} FROM streams ORDER BY id").fetchall()
        meta = conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        names = _COLUMNS.split(", ")
        return record_digest([dict(meta), *(dict(zip(names, row, strict=True)) for row in rows)])

    @unavailable(sqlite3.DatabaseError)
    def sweep(self) -> int:
        cutoff = self._cutoff()
        if cutoff is None:
            return 0
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute("DELETE FROM streams WHERE updated < ?", (cutoff,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return int(n)

    @unavailable(sqlite3.DatabaseError)
    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    @unavailable(sqlite3.DatabaseError)
    def durability(self) -> Durability:
        """Durable through a power cut with ``synchronous=FULL`` in WAL mode; ``normal`` survives a killed process."""
        journal, level = self.pragma("journal_mode"), self.pragma("synchronous")
        durable = journal == "wal" and level in ("2", "3")
        return Durability(self.mode, durable, {"journal_mode": journal, "synchronous": self.sync})

    @unavailable(sqlite3.DatabaseError)
    def maintain(self) -> None:
        """Copy the WAL into the database without blocking writers (``wal_checkpoint(PASSIVE)``)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, sync={self.sync!r}, ttl={self.ttl})"


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not undone it itself (it does on a full disk or an
    I/O error); a failing ROLLBACK must not hide the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

"""State stores: compare-and-set, group commit, TTL, meta, checksums; SQLite and a real redis-server alike."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hiddenstate as hs
from hiddenstate.errors import StoreUnavailableError
from hiddenstate.serve.stores import Durability, Record, StateStore, Write, new_version, open_store
from hiddenstate.serve.stores.redis import RedisStore
from hiddenstate.serve.stores.sqlite import SQLiteStore
from hiddenstate.serve.testing import RedisServer

MakeStore = Callable[..., StateStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Opens stores of the parametrized kind; every one the test opens shares one place."""
    made: list[StateStore] = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"

    def make(**kw: object) -> StateStore:
        if request.param == "sqlite":
            store = open_store(f"sqlite://{tmp_path / 'states.db'}", **kw)  # type: ignore[arg-type]
        else:
            server = request.getfixturevalue("redis_server")
            store = open_store(server.url(0, prefix=prefix), **kw)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _record(seq: int, state: bytes = b"\x00" * 8, **kw: object) -> Record:
    kw.setdefault("updated", time.time())  # the service writes the time of the write; the TTL counts from it
    return Record(seq, new_version(), state, **kw)  # type: ignore[arg-type]


def test_write_is_compare_and_set_on_the_version(make_store: MakeStore) -> None:
    store = make_store()
    first = _record(1, b"abcdefgh", tail=b"tail", forecast=b"fcst", digest=b"d" * 16, updated=12.5)
    assert store.write([Write("s", 0, first)]) == [True]
    assert store.read(["s", "missing"]) == {"s": first}  # every field back, bytes exact
    # A second creation, or an update from a stale version, does nothing.
    assert store.write([Write("s", 0, _record(9))]) == [False]
    assert store.write([Write("s", first.version + 1, _record(9))]) == [False]
    assert store.read(["s"])["s"] == first
    second = _record(2, b"12345678")
    assert store.write([Write("s", first.version, second)]) == [True]
    assert store.read(["s"])["s"] == second
    assert store.read(["s"])["s"].tail is None  # None blobs stay None


def test_one_write_call_applies_each_stream_on_its_own(make_store: MakeStore) -> None:
    store = make_store()
    a, b = _record(1), _record(1)
    assert store.write([Write("a", 0, a), Write("b", 0, b)]) == [True, True]
    a2, b2, c1 = _record(2), _record(2), _record(1)
    # b's expected version is stale: only b's write fails, in the same transaction.
    assert store.write([Write("a", a.version, a2), Write("b", 12345, b2), Write("c", 0, c1)]) == [True, False, True]
    assert store.read(["a", "b", "c"]) == {"a": a2, "b": b, "c": c1}


def test_delete_is_compare_and_set_too(make_store: MakeStore) -> None:
    store = make_store()
    r = _record(1)
    store.write([Write("s", 0, r)])
    assert store.write([Write("s", r.version + 1, None)]) == [False]
    assert store.count() == 1
    assert store.write([Write("s", r.version, None)]) == [True]
    assert store.read(["s"]) == {} and store.count() == 0


def test_meta_pins_what_was_stored_first(make_store: MakeStore) -> None:
    store = make_store()
    assert store.init_meta({"fingerprint": "hs1-a", "layout": "x"}) == {"fingerprint": "hs1-a", "layout": "x"}
    assert make_store().init_meta({"fingerprint": "hs1-b", "layout": "x"}) == {"fingerprint": "hs1-a", "layout": "x"}


def test_checksum_follows_the_contents_only(make_store: MakeStore) -> None:
    store = make_store()
    store.init_meta({"fingerprint": "f"})
    empty = store.checksum()
    r = _record(1)
    store.write([Write("s", 0, r)])
    full = store.checksum()
    assert full != empty
    store.read(["s"])
    store.write([Write("s", 999, _record(5))])  # refused: nothing changes
    assert store.checksum() == full
    store.write([Write("s", r.version, None)])
    assert store.checksum() == empty


def test_ttl_forgets_idle_streams(make_store: MakeStore) -> None:
    store = make_store(ttl=0.3)
    r = _record(4)
    store.write([Write("s", 0, r)])
    assert store.read(["s"]) == {"s": r}
    time.sleep(0.6)
    assert store.read(["s"]) == {} and store.count() == 0
    # An expired stream counts as absent: it can start again from version 0.
    fresh = _record(1)
    assert store.write([Write("s", 0, fresh)]) == [True]
    assert store.read(["s"]) == {"s": fresh}


def test_ttl_sweep_deletes_expired_rows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", ttl=0.2)
    store.write([Write(f"s{i}", 0, _record(1)) for i in range(5)])
    time.sleep(0.4)
    store.write([Write("new", 0, _record(1))])
    assert store.sweep() == 5
    assert store.count() == 1
    store.close()


def test_no_ttl_keeps_everything(make_store: MakeStore) -> None:
    store = make_store()
    assert store.ttl is None
    store.write([Write("s", 0, _record(1, updated=0.0))])  # written at the epoch: ancient, still kept
    assert store.sweep() == 0 and store.count() == 1


@pytest.mark.parametrize(("sync", "level"), [("full", "2"), ("normal", "1")])
def test_sqlite_runs_in_wal_mode_with_the_asked_sync(tmp_path: Path, sync: str, level: str) -> None:
    store = SQLiteStore(tmp_path / "s.db", sync=sync)
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == level
    store.close()


def test_open_store_reads_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_store(f"sqlite://{tmp_path / 'a.db'}")
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "a.db"
    absolute.close()
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://rel.db", "plain.db"):
        store = open_store(url)
        assert isinstance(store, SQLiteStore) and not store.path.is_absolute()
        store.close()
    assert (tmp_path / "rel.db").is_file() and (tmp_path / "plain.db").is_file()


def test_open_store_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(
        hs.ConfigError, match=r"^unknown store URL 'mysql://x/y'; expected sqlite:///path.db or redis://host:port/db$"
    ):
        open_store("mysql://x/y")
    with pytest.raises(
        hs.ConfigError, match=r"^store URL 'sqlite://' names no file; expected sqlite:///path/states.db$"
    ):
        open_store("sqlite://")
    with pytest.raises(hs.ConfigError, match=r"folder .*nowhere does not exist$"):
        open_store(f"sqlite://{tmp_path / 'nowhere' / 's.db'}")
    with pytest.raises(hs.ConfigError, match=r"^unknown sqlite sync mode 'off'; expected one of full, normal$"):
        open_store(f"sqlite://{tmp_path / 's.db'}", sync="off")
    with pytest.raises(hs.ConfigError, match=r"^ttl must be a positive number of seconds, got 0$"):
        open_store(f"sqlite://{tmp_path / 's.db'}", ttl=0)


def test_redis_store_reports_its_durability_and_hides_passwords(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url(0))
    assert isinstance(store, RedisStore)
    assert store.durability() == Durability("strict", True, {"appendonly": "yes", "appendfsync": "always"})
    assert store.local is False
    assert store.prefix == "hiddenstate:"
    store.close()
    secret = RedisStore("redis://user:hunter2@127.0.0.1:1/0?prefix=x:")
    assert secret.url == "redis://user:***@127.0.0.1:1/0?prefix=x:" and secret.prefix == "x:"
    secret.close()


def test_concurrent_writers_never_lose_an_update(make_store: MakeStore) -> None:
    """Four writers with their own connections (as four replicas) bump one stream by compare-and-set."""
    stores = [make_store() for _ in range(4)]
    stores[0].write([Write("counter", 0, _record(0))])
    per_writer = 40

    def bump(store: StateStore) -> None:
        done = 0
        while done < per_writer:
            r = store.read(["counter"])["counter"]
            if store.write([Write("counter", r.version, _record(r.seq + 1))])[0]:
                done += 1

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].read(["counter"])["counter"].seq == 4 * per_writer


def test_versions_are_random_tokens_exact_in_json() -> None:
    versions = {new_version() for _ in range(10_000)}
    assert len(versions) == 10_000
    assert all(1 <= v < 2**53 for v in versions)


# -- durability, and the backends' failures at the boundary ------------------------------------------


def _weak(server: RedisServer) -> str:
    return f"Redis runs with appendonly={server.appendonly} appendfsync={server.appendfsync}: an acknowledged update"


@pytest.mark.parametrize(("appendonly", "appendfsync"), [("yes", "everysec"), ("no", "always")])
def test_strict_refuses_a_redis_below_appendfsync_always_and_relaxed_runs_on_it(
    redis_bin: str, appendonly: str, appendfsync: str
) -> None:
    with RedisServer(redis_bin, appendonly=appendonly, appendfsync=appendfsync) as server:
        strict = open_store(server.url(0))
        with pytest.raises(StoreUnavailableError, match=rf"^the state store {server.url(0)} is unavailable: ") as e:
            strict.init_meta({"fingerprint": "f"})
        assert e.value.reason == (
            f"{_weak(server)} would not survive a crash of Redis; set appendonly yes and appendfsync always, "
            "or serve with --durability relaxed"
        )
        with pytest.raises(StoreUnavailableError, match="would not survive a crash of Redis"):
            strict.read(["x"])  # every call, not only the first
        strict.close()
        relaxed = open_store(server.url(0), durability="relaxed")
        assert relaxed.init_meta({"fingerprint": "f"}) == {"fingerprint": "f"}
        settings = {"appendonly": appendonly, "appendfsync": appendfsync}
        assert relaxed.durability() == Durability("relaxed", False, settings)
        assert relaxed.durability().to_json() == {"mode": "relaxed", "durable": False, **settings}
        relaxed.close()


def test_a_redis_weakened_at_runtime_stops_strict_writes_at_the_next_maintain(redis_bin: str) -> None:
    """CONFIG SET appendfsync no on a running Redis opens no new connection: maintain (every half
    second in the service) reads the settings again, refuses writes while they are weak and
    reports them; read-only calls go on."""
    import redis

    with RedisServer(redis_bin) as server:
        store = open_store(server.url(0, prefix="rt:"))
        r = _record(1)
        assert store.write([Write("s", 0, r)]) == [True]
        admin = redis.Redis.from_url(server.url(0))
        admin.config_set("appendfsync", "no")
        store.maintain()
        assert store.durability() == Durability("strict", False, {"appendonly": "yes", "appendfsync": "no"})
        with pytest.raises(StoreUnavailableError, match=r"appendonly=yes appendfsync=no: an acknowledged update"):
            store.write([Write("s", r.version, _record(2))])
        assert store.read(["s"]) == {"s": r}  # nothing was written
        admin.config_set("appendfsync", "always")
        store.maintain()
        assert store.durability() == Durability("strict", True, {"appendonly": "yes", "appendfsync": "always"})
        assert store.write([Write("s", r.version, _record(2))]) == [True]
        relaxed = open_store(server.url(0, prefix="rt:"), durability="relaxed")
        admin.config_set("appendfsync", "everysec")
        relaxed.maintain()  # relaxed mode writes on, and says what it runs on
        assert relaxed.durability().durable is False
        assert relaxed.write([Write("t", 0, _record(1))]) == [True]
        admin.config_set("appendfsync", "always")
        for s in (store, relaxed):
            s.close()
        admin.close()


def test_redis_durability_is_read_again_on_every_reconnect(redis_bin: str) -> None:
    """A Redis restarted with a weaker setting is refused at the next call, not only at startup."""
    with RedisServer(redis_bin) as server:
        store = open_store(server.url(0, prefix="re:"))
        r = _record(1)
        assert store.write([Write("s", 0, r)]) == [True]
        server.kill()
        server.appendfsync = "no"
        server.start()
        with pytest.raises(StoreUnavailableError, match=r"appendonly=yes appendfsync=no: an acknowledged update"):
            store.read(["s"])
        server.kill()
        server.appendfsync = "always"
        server.start()  # durable again: the same store object works again, and nothing acknowledged is lost
        assert store.read(["s"]) == {"s": r}
        assert store.durability() == Durability("strict", True, {"appendonly": "yes", "appendfsync": "always"})
        store.close()


def test_a_redis_that_is_down_is_store_unavailable_on_every_call(redis_bin: str) -> None:
    with RedisServer(redis_bin) as server:
        store = open_store(server.url(0, prefix="down:"))
        store.write([Write("s", 0, _record(1))])
        server.kill()
        calls = {
            "read": lambda: store.read(["s"]),
            "write": lambda: store.write([Write("t", 0, _record(1))]),
            "count": store.count,
            "checksum": store.checksum,
            "ping": store.ping,
            "init_meta": lambda: store.init_meta({"a": "b"}),
        }
        for name, call in calls.items():
            with pytest.raises(StoreUnavailableError, match=r"is unavailable: .*connecting") as e:
                call()
            assert e.value.code == "store_unavailable" and e.value.http_status == 503, name
        server.start()
        assert set(store.read(["s", "t"])) == {"s"}  # the refused write left nothing behind
        store.close()


def test_sqlite_reports_its_durability_and_is_local(tmp_path: Path) -> None:
    full = SQLiteStore(tmp_path / "f.db")
    assert full.local is True
    assert full.durability() == Durability("strict", True, {"journal_mode": "wal", "synchronous": "full"})
    normal = SQLiteStore(tmp_path / "n.db", sync="normal", durability="relaxed")
    assert normal.durability() == Durability("relaxed", False, {"journal_mode": "wal", "synchronous": "normal"})
    full.close()
    normal.close()
    with pytest.raises(hs.ConfigError, match=r"^unknown durability 'loose'; expected one of strict, relaxed$"):
        open_store(f"sqlite://{tmp_path / 'x.db'}", durability="loose")


def test_a_full_sqlite_file_is_store_unavailable_and_keeps_what_it_held(tmp_path: Path) -> None:
    """SQLite's own page limit stands in for a full disk here (the service test fills a real file limit)."""
    store = SQLiteStore(tmp_path / "full.db")
    kept = _record(1)
    store.write([Write("kept", 0, kept)])
    before = store.checksum()
    pages = int(store.pragma("page_count"))
    store._conn().execute(f"PRAGMA max_page_count = {pages + 2}")
    big = [Write(f"s{i}", 0, _record(1, b"x" * 4000)) for i in range(50)]
    with pytest.raises(StoreUnavailableError, match=r"full\.db is unavailable: database or disk is full$"):
        store.write(big)
    assert store.checksum() == before  # the whole transaction rolled back
    assert store.read(["kept", "s0"]) == {"kept": kept}  # reads keep working
    assert store.write([Write("kept", kept.version, None)]) == [True]  # and a small write still fits
    store.close()


def test_a_damaged_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all, just sixteen+ bytes of text\n" * 4)
    with pytest.raises(StoreUnavailableError, match=r"junk\.db is unavailable: file is not a database$"):
        SQLiteStore(junk)

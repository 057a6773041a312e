"""Store faults on a real server process: Redis killed mid-load, and a SQLite file that cannot grow.

Either way the service answers 503 ``store_unavailable`` with a JSON body and a ``Retry-After``
header, changes nothing it did not acknowledge, keeps answering what it can, and recovers
without a restart when the store is back.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from hiddenstate.runs.run import Run, load_run
from hiddenstate.serve import ServedModel, Service, create_app
from hiddenstate.serve.stores import Write, new_version
from hiddenstate.serve.stores.sqlite import SQLiteStore
from hiddenstate.serve.testing import RedisServer, ServerProcess, ThreadServer, demo_run, free_port

ATOL = 1e-6  # a stream served in a batch takes other BLAS kernels than the same stream replayed alone


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_run(tmp_path_factory.mktemp("serve-faults") / "run")


@pytest.fixture(scope="module")
def run(run_dir: Path) -> Run:
    return load_run(run_dir)


def library_state(run: Run, observes: list[list[list[float]]]) -> dict[str, np.ndarray]:
    """The state after these observes, through the library alone (the reference)."""
    state = None
    for values in observes:
        x = torch.from_numpy(run.scaler.transform(np.asarray(values, np.float64)).astype(np.float32))[None]
        with torch.no_grad():
            _, state = run.model(x, state)
    assert state is not None
    return {k: v.numpy() for k, v in state.to_dict().items()}


def assert_unavailable(r: httpx.Response, store: str, reason: str) -> None:
    """The 503 contract: a JSON body with the code and a one-line message, and Retry-After."""
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert set(body) == {"detail", "error"}
    assert body["error"] == "store_unavailable"
    assert re.fullmatch(rf"the state store {re.escape(store)} is unavailable: {reason}", body["detail"]), body


# -- Redis down mid-load ------------------------------------------------------------------------------


class Stream:
    """One client's stream: what it sent under each seq, and the last seq acknowledged."""

    def __init__(self, name: str, rng: np.random.Generator) -> None:
        self.name = name
        self.rng = rng
        self.sent: list[list[list[float]]] = []
        self.acked = 0

    def body(self) -> dict[str, Any]:
        if len(self.sent) == self.acked:  # the last one was acknowledged: new rows; else the same again
            steps = int(self.rng.integers(1, 4))
            self.sent.append((50 + 10 * self.rng.standard_normal((steps, 2))).round(3).tolist())
        return {"seq": self.acked + 1, "values": self.sent[self.acked]}


async def _client(url: str, stream: Stream, outage: asyncio.Event, back: asyncio.Event, refusals: list[Any]) -> None:
    """Observe until 8 acks after Redis came back; a 503 or a dropped answer is retried with the same body."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        after = 0
        while after < 8:
            body = stream.body()
            try:
                r = await http.post(f"/v1/streams/{stream.name}/observe", json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.02)
                continue
            if r.status_code == 200:
                assert r.json()["seq"] == body["seq"]
                stream.acked += 1
                after += back.is_set()
            else:
                refusals.append(r)
                await asyncio.sleep(0.02)
            if not outage.is_set() and stream.acked >= 5:
                outage.set()  # enough acknowledged before the kill
            await asyncio.sleep(0)


async def _redis_outage(url: str, redis: RedisServer, streams: list[Stream]) -> tuple[list[Any], list[Any], list[int]]:
    outage, back = asyncio.Event(), asyncio.Event()
    refusals: list[Any] = []
    tasks = [asyncio.create_task(_client(url, s, outage, back, refusals)) for s in streams]
    await outage.wait()
    redis.kill()  # SIGKILL, mid-load
    before = [s.acked for s in streams]
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while len(refusals) < 3 * len(streams):  # the clients keep trying and keep being refused
            await asyncio.sleep(0.05)
        health = [await http.get("/healthz") for _ in range(2)]
        health.append(await http.get("/metrics"))  # the outage is what the metrics should still report
        await asyncio.to_thread(redis.start)  # the same port, the same AOF
        back.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        health.append(await http.get("/healthz"))
    return refusals, health, before


def test_redis_killed_mid_load_gives_503s_then_recovers_without_a_restart(
    redis_bin: str, run_dir: Path, run: Run
) -> None:
    with RedisServer(redis_bin) as redis:
        store = redis.url(0, prefix=f"{uuid.uuid4().hex[:8]}:")
        with ServerProcess(run_dir, ["--store", store]) as server:
            rng = np.random.default_rng(7)
            streams = [Stream(f"r{i}", rng) for i in range(6)]
            refusals, health, before = asyncio.run(_redis_outage(server.url, redis, streams))
            assert sum(before) >= 5
            print(f"{len(refusals)} refusals, e.g. {refusals[0].json()['detail']}")
            for r in refusals:
                assert_unavailable(r, store, r"(Error \d+ connecting|Connection closed by server|.*Connection).*")
            for down in health[:2]:
                assert down.status_code == 503 and down.headers["retry-after"] == "1"
                assert down.json()["store"] == "down" and down.json()["error"] == "store_unavailable"
            metrics = health.pop(2)
            assert metrics.status_code == 200, metrics.text
            assert re.search(r'hiddenstate_requests_total\{endpoint="[^"]*observe",status="503"\} [1-9]', metrics.text)
            assert "\nhiddenstate_streams " not in metrics.text  # the count is unknown, so left out
            assert health[2].status_code == 200 and health[2].json()["store"] == "up"
            assert health[2].json()["durability"] == {
                "mode": "strict", "durable": True, "appendonly": "yes", "appendfsync": "always",
            }  # fmt: skip
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for s, acked in zip(streams, before, strict=True):
                    assert s.acked >= acked + 8  # what was acknowledged before the kill, and 8 after
                    got = http.get(f"/v1/streams/{s.name}/state").json()
                    assert got["seq"] == s.acked  # no acknowledged update lost, none applied twice
                    want = library_state(run, s.sent[: s.acked])
                    assert set(got["state"]) == set(want)
                    for k, v in want.items():
                        np.testing.assert_allclose(np.asarray(got["state"][k], np.float32), v, atol=ATOL, rtol=0)
                    nxt = http.post(f"/v1/streams/{s.name}/observe", json={"seq": s.acked + 1, "values": [[1, 2]]})
                    assert nxt.status_code == 200 and nxt.json()["seq"] == s.acked + 1  # the next seq continues
            assert server.proc is not None and server.proc.poll() is None  # never restarted


# -- SQLite that cannot grow --------------------------------------------------------------------------

FILE_LIMIT = 256 * 1024  # bytes: RLIMIT_FSIZE of the server process, so its database cannot grow past it


def _limited() -> None:  # in the child, before exec: writes past the limit fail with EFBIG (no SIGXFSZ kill)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@pytest.fixture
def limited_server(run_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "states.db"
    port = free_port()
    cmd = [sys.executable, "-m", "hiddenstate.serve", str(run_dir), "--port", str(port), "--store", f"sqlite://{db}"]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=_limited)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        else:
            pytest.fail(f"the server did not answer /healthz in 60 s: {(tmp_path / 'server.log').read_text()}")
        yield url, db
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_sqlite_file_that_cannot_grow_gives_503_and_keeps_its_contents(
    limited_server: tuple[str, Path], run: Run
) -> None:
    url, db = limited_server
    rng = np.random.default_rng(3)
    with httpx.Client(base_url=url, timeout=60) as http:
        kept = {"k0": [[50.0, 40.0]], "k1": [[51.0, 39.0], [52.0, 38.5]]}
        for name, values in kept.items():
            assert http.post(f"/v1/streams/{name}/observe", json={"seq": 1, "values": values}).status_code == 200
        before = {name: http.get(f"/v1/streams/{name}/state").json() for name in kept}
        refused, filled = None, 0
        for batch in range(200):  # fill the file with new streams until a write no longer fits
            ids = [f"f{batch}-{i}" for i in range(400)]
            values = (50 + 10 * rng.standard_normal((len(ids), 1, 2))).tolist()
            items = [{"id": i, "seq": 1, "values": v} for i, v in zip(ids, values, strict=True)]
            r = http.post("/v1/observe", json={"streams": items})
            if r.status_code != 200:
                refused = (r, ids)
                break
            filled += len(ids)
        assert refused is not None, f"{filled} streams written under a {FILE_LIMIT}-byte file limit"
        r, ids = refused
        print(f"refused after {filled} streams: {r.json()['detail']}")
        assert_unavailable(r, f"sqlite://{db}", r"(database or disk is full|disk I/O error)")
        # The refused batch left nothing behind; what was there is unchanged, and reads keep working.
        for i in (ids[0], ids[-1]):
            assert http.get(f"/v1/streams/{i}/state").status_code == 404
        for name in kept:
            assert http.get(f"/v1/streams/{name}/state").json() == before[name]
        forecast = http.post("/v1/streams/k1/forecast", json={"horizon": 3})
        assert forecast.status_code == 200 and len(forecast.json()["forecast"]) == 3
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["store"] == "up"  # reads work: the store is up
    # The file itself is whole.
    store = SQLiteStore(db)
    assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(store.read(["k0", "k1", ids[0]])) == {"k0", "k1"}
    store.close()


# -- Redis durability: refused below appendfsync always, unless --durability relaxed ------------------


@pytest.mark.parametrize(("appendonly", "appendfsync"), [("yes", "everysec"), ("no", "always")])
def test_serve_refuses_a_redis_that_is_not_durable_unless_relaxed(
    redis_bin: str, run_dir: Path, appendonly: str, appendfsync: str
) -> None:
    with RedisServer(redis_bin, appendonly=appendonly, appendfsync=appendfsync) as redis:
        store = redis.url(0, prefix=f"{uuid.uuid4().hex[:8]}:")
        done = subprocess.run(
            [sys.executable, "-m", "hiddenstate.serve", str(run_dir), "--store", store, "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert done.stderr == (
            f"Error: store {store}: cannot be used: Redis runs with appendonly={appendonly} "
            f"appendfsync={appendfsync}: an acknowledged update would not survive a crash of Redis; set appendonly "
            "yes and appendfsync always, or serve with --durability relaxed\n"
        )
        with ServerProcess(run_dir, ["--store", store, "--durability", "relaxed"]) as server:
            settings = {"appendonly": appendonly, "appendfsync": appendfsync}
            health = httpx.get(f"{server.url}/healthz").json()
            durability = {"mode": "relaxed", "durable": False, **settings}
            assert health == {"status": "ok", "store": "up", "durability": durability}
            metrics = httpx.get(f"{server.url}/metrics").text
            labels = f'appendfsync="{appendfsync}",appendonly="{appendonly}",mode="relaxed"'
            want = f"hiddenstate_store_durable{{{labels}}} 0"
            assert want in metrics.splitlines()
            observed = httpx.post(f"{server.url}/v1/streams/a/observe", json={"seq": 1, "values": [[1, 2]]})
            assert observed.status_code == 200
            assert (
                f"Warning: the store runs with appendonly={appendonly} appendfsync={appendfsync} (--durability "
                "relaxed): an acknowledged update may be lost in a crash of the machine"
            ) in server.read_log()


def test_a_redis_restarted_below_durable_is_refused_at_the_reconnect(redis_bin: str, run_dir: Path) -> None:
    with RedisServer(redis_bin) as redis:
        store = redis.url(0, prefix=f"{uuid.uuid4().hex[:8]}:")
        with ServerProcess(run_dir, ["--store", store]) as server, httpx.Client(base_url=server.url) as http:
            assert http.post("/v1/streams/a/observe", json={"seq": 1, "values": [[1, 2]]}).status_code == 200
            redis.kill()
            redis.appendfsync = "everysec"
            redis.start()
            refused = http.post("/v1/streams/a/observe", json={"seq": 2, "values": [[1, 2]]})
            assert_unavailable(refused, store, r"Redis runs with appendonly=yes appendfsync=everysec: .*relaxed")
            health = http.get("/healthz")
            assert health.status_code == 503 and health.json()["store"] == "down"
            redis.kill()
            redis.appendfsync = "always"
            redis.start()
            again = http.post("/v1/streams/a/observe", json={"seq": 2, "values": [[1, 2]]})
            assert again.status_code == 200 and again.json()["seq"] == 2


# -- bounded retries ----------------------------------------------------------------------------------


class RivalReplica:
    """A real SQLite store, and a second replica on the same file that rewrites each stream (a new
    version, the same contents) just before every write of the first: every compare-and-set loses."""

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path)
        self.rival = SQLiteStore(path)
        self.writes = 0

    def write(self, writes: list[Write]) -> list[bool]:
        self.writes += 1
        current = self.rival.read([w.stream_id for w in writes])
        self.rival.write([Write(sid, r.version, r._replace(version=new_version())) for sid, r in current.items()])
        return self.store.write(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_compare_and_set_retries_are_bounded_and_their_end_is_a_503(run_dir: Path, tmp_path: Path) -> None:
    store = RivalReplica(tmp_path / "s.db")
    service = Service(ServedModel.from_run(load_run(run_dir)), store, cas_tries=3, max_wait=0)  # type: ignore[arg-type]
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v1/streams/a/observe", json={"seq": 1, "values": [[1, 2]]}).status_code == 200  # new: wins
        for method, path, body in [
            ("POST", "/v1/streams/a/observe", {"seq": 2, "values": [[1, 2]]}),
            ("PUT", "/v1/streams/a/state", {"state": {k: [v[0]] for k, v in _state(http, "a").items()}}),
            ("DELETE", "/v1/streams/a/state", None),
        ]:
            store.writes = 0
            r = http.request(method, path, json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json() == {
                "detail": f"the state store {store.url} is unavailable: stream 'a': the compare-and-set lost to other "
                "writers 3 times in a row; try again",
                "error": "store_busy",
            }
            assert store.writes == 3  # three tries, then the clear error: not a loop without end
        bulk = http.post("/v1/observe", json={"streams": [{"id": "a", "seq": 2, "values": [[1, 2]]}]})
        assert bulk.status_code == 200 and bulk.json()["results"][0]["status"] == 503
        assert bulk.json()["results"][0]["error"] == "store_busy"
        assert _state(http, "a") and http.get("/v1/streams/a/state").json()["seq"] == 1  # nothing advanced


def _state(http: httpx.Client, stream: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/streams/{stream}/state").json()["state"])


# -- the Redis half always runs ------------------------------------------------------------------------


@pytest.mark.parametrize("require", ["", "1"])
def test_without_redis_server_the_redis_tests_skip_loudly_or_fail_in_ci(require: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HIDDENSTATE_REQUIRE_REDIS"}
    env.update(HIDDENSTATE_REDIS_SERVER="", HIDDENSTATE_REQUIRE_REDIS=require)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-k", "hides_passwords",
         str(Path(__file__).parent / "test_serve_store.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    if require:
        assert done.returncode == 1, done.stdout
        assert "1 error" in done.stdout
        assert "HIDDENSTATE_REQUIRE_REDIS=1 but redis-server is not installed" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert "1 skipped" in done.stdout
        assert "REDIS TESTS SKIPPED" in done.stdout
        assert "1 tests of the Redis store did not run: redis-server is not installed" in done.stdout

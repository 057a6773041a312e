"""End to end: real server processes (two replicas sharing one store), many concurrent clients,
SIGKILL mid-load, and the command line; each on SQLite and on a real redis-server.

Every answer and every final state is checked against an offline replay through the library.
A stream served in a batch of many takes other BLAS kernels than the same stream replayed alone,
so values are compared to 1e-6 (float32 rounding); seqs, duplicates and conflicts exactly.
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import hiddenstate as hs
from hiddenstate.runs.run import Run, load_run
from hiddenstate.serve import ServedModel, open_store, register
from hiddenstate.serve.testing import RedisServer, ServerProcess, demo_run

ATOL = 1e-6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_run(tmp_path_factory.mktemp("serve-e2e") / "run")


@pytest.fixture(scope="module")
def run(run_dir: Path) -> Run:
    return load_run(run_dir)


def store_url(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{folder / f'{uuid.uuid4().hex[:8]}.db'}"
    return str(request.getfixturevalue("redis_server").url(0, prefix=f"{uuid.uuid4().hex[:8]}:"))


# -- the offline replay -----------------------------------------------------------------------------


def replay_stream(run: Run, observes: list[np.ndarray]) -> tuple[list[np.ndarray], hs.State]:
    """Each observe's prediction (original units) and the final state, through the library alone."""
    preds, state = [], None
    for values in observes:
        x = torch.from_numpy(run.scaler.transform(np.asarray(values, np.float64)).astype(np.float32))[None]
        with torch.no_grad():
            y, state = run.model(x, state)
        preds.append(run.scaler.inverse_transform(y[0, -1].double().numpy()))
    assert state is not None
    return preds, state


def state_mismatch(got: dict[str, Any], want: hs.State) -> float:
    """The largest difference between a GET state and a library state (inf if the names differ)."""
    if set(got) != set(want.to_dict()):
        return float("inf")
    return max(float(np.abs(np.asarray(got[k], np.float32) - t.numpy()).max()) for k, t in want.to_dict().items())


@dataclass
class Ledger:
    """What the clients sent and what the service acknowledged, per stream."""

    sent: dict[str, dict[int, list[list[float]]]] = field(default_factory=lambda: defaultdict(dict))
    acked: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    extra: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # duplicate and racing answers
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# -- concurrency: 16 clients, 1,000 streams, two replicas -------------------------------------------


async def resend(http: httpx.AsyncClient, path: str, body: dict[str, Any], ledger: Ledger) -> httpx.Response:
    """POST, and send the same request again when the connection dropped before the answer came
    (a keep-alive connection the server closed as it was reused). The seq contract makes it safe."""
    for attempt in range(5):
        try:
            return await http.post(path, json=body)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            ledger.counts["resent"] += 1
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _load(urls: list[str], ledger: Ledger, *, streams: int, observes: int, clients: int, seed: int) -> None:
    rng = random.Random(seed)
    http = [httpx.AsyncClient(base_url=u, timeout=60, limits=httpx.Limits(max_connections=clients)) for u in urls]

    def values(steps: int) -> list[list[float]]:
        return [[round(rng.gauss(50, 10), 3), round(rng.gauss(40, 8), 3)] for _ in range(steps)]

    async def post(path: str, body: dict[str, Any], via: httpx.AsyncClient | None = None) -> httpx.Response:
        ledger.counts["requests"] += 1
        return await resend((via or rng.choice(http)), path, body, ledger)

    async def one(stream: str, seq: int, rows: list[list[float]]) -> None:
        r = await post(f"/v1/streams/{stream}/observe", {"seq": seq, "values": rows})
        assert r.status_code == 200, r.text
        ledger.acked[stream][seq] = r.json()

    async def client(k: int) -> None:
        mine = [f"c{k}-s{i}" for i in range(k, streams, clients)]
        for seq in range(1, observes + 1):
            bulk: list[dict[str, Any]] = []
            for stream in mine:
                rows = values(rng.randint(1, 3))
                ledger.sent[stream][seq] = rows
                roll = rng.random()
                if roll < 0.08:  # out of order on purpose: the next seq first
                    r = await post(f"/v1/streams/{stream}/observe", {"seq": seq + 1, "values": values(1)})
                    assert (r.status_code, r.json()["expected_seq"]) == (409, seq), r.text
                    ledger.counts["out_of_order"] += 1
                if roll > 0.96:  # the same request to both replicas at once
                    both = await asyncio.gather(
                        *(post(f"/v1/streams/{stream}/observe", {"seq": seq, "values": rows}, h) for h in http)
                    )
                    assert [r.status_code for r in both] == [200] * len(both), [r.text for r in both]
                    ledger.acked[stream][seq] = both[0].json()
                    ledger.extra += [(stream, seq, r.json()) for r in both[1:]]
                    ledger.counts["races"] += 1
                elif k % 4 == 0:  # a quarter of the clients send bulk requests
                    bulk.append({"id": stream, "seq": seq, "values": rows})
                else:
                    await one(stream, seq, rows)
                if roll < 0.1 and stream not in {b["id"] for b in bulk}:  # a retry of a request already answered
                    r = await post(f"/v1/streams/{stream}/observe", {"seq": seq, "values": rows})
                    assert r.status_code == 200 and r.headers["x-hiddenstate-replayed"] == "true", r.text
                    ledger.extra.append((stream, seq, r.json()))
                    ledger.counts["duplicates"] += 1
            for start in range(0, len(bulk), 20):
                r = await post("/v1/observe", {"streams": bulk[start : start + 20]})
                assert r.status_code == 200, r.text
                for item in r.json()["results"]:
                    assert item.pop("status") == 200, item
                    ledger.acked[item["id"]][item["seq"]] = item

    try:
        await asyncio.gather(*(client(k) for k in range(clients)))
    finally:
        for h in http:
            await h.aclose()


def _check_against_replay(run: Run, ledger: Ledger, store_url: str, *, final_seq: int) -> None:
    """Zero mismatches between the service and the library: answers, duplicates, final states.

    The final states are read from the store itself (all at once; GET is tested elsewhere)."""
    served, store = ServedModel.from_run(run), open_store(store_url)
    records = store.read(list(ledger.sent))
    store.close()
    mismatches, worst = 0, 0.0
    for stream, sent in ledger.sent.items():
        assert records[stream].seq == final_seq
        preds, state = replay_stream(run, [sent[s] for s in range(1, final_seq + 1)])
        for seq, answer in ledger.acked[stream].items():
            assert answer["seq"] == seq and answer["id"] == stream
            diff = float(np.abs(np.asarray(answer["prediction"]) - preds[seq - 1]).max())
            worst = max(worst, diff)
            mismatches += diff > ATOL * 50  # original units: std 10, so 1e-6 normalised is ~1e-5
        diff = state_mismatch(served.state_lists(records[stream].state), state)
        worst = max(worst, diff)
        mismatches += diff > ATOL
    for stream, seq, answer in ledger.extra:
        mismatches += answer != ledger.acked[stream][seq]  # a replayed answer is the stored one, bit for bit
    assert mismatches == 0, f"{mismatches} mismatches (largest difference {worst:.3g})"


def _spawned_children(pid: int) -> list[str]:
    """The child processes that multiprocessing spawned (not its resource tracker)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:  # it exited meanwhile
            pass
    return found


def _concurrency(
    url: str, run_dir: Path, run: Run, *, replicas: int, observes: int, clients: int, workers: int = 1
) -> Ledger:
    flags = ["--store", url, "--workers", str(workers)]
    servers = [ServerProcess(run_dir, flags).spawn() for _ in range(replicas)]
    try:
        for server in servers:
            server.wait_ready()
            if workers > 1:  # uvicorn's supervisor and its worker processes
                assert server.proc is not None
                deadline = time.monotonic() + 20  # the first worker may answer before the others exist
                while len(_spawned_children(server.proc.pid)) != workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(_spawned_children(server.proc.pid)) == workers
        ledger = Ledger()
        asyncio.run(_load([s.url for s in servers], ledger, streams=1000, observes=observes, clients=clients, seed=1))
        # With worker processes each answers /metrics with its own counters: ask a few times.
        metrics = "".join(httpx.get(f"{s.url}/metrics").text for s in servers for _ in range(4 * workers))
    finally:
        for server in servers:
            server.stop()
    _check_against_replay(run, ledger, url, final_seq=observes)
    assert sum(len(v) for v in ledger.acked.values()) == 1000 * observes
    assert re.search(r"^hiddenstate_batch_size_count [1-9]", metrics, re.M)
    return ledger


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_clients_on_two_replicas_match_the_library_replay(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, run: Run, tmp_path: Path
) -> None:
    ledger = _concurrency(store_url(kind, request, tmp_path), run_dir, run, replicas=2, observes=3, clients=16)
    assert ledger.counts["requests"] >= 2000
    assert ledger.counts["duplicates"] > 100 and ledger.counts["out_of_order"] > 100 and ledger.counts["races"] > 20


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker processes from /proc (Linux)")
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_worker_processes_share_the_store_and_match_the_library_replay(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, run: Run, tmp_path: Path
) -> None:
    """`--workers 2`: two processes behind one port, each with its own batcher, one store."""
    ledger = _concurrency(
        store_url(kind, request, tmp_path), run_dir, run, replicas=1, observes=3, clients=16, workers=2
    )
    assert ledger.counts["duplicates"] > 100 and ledger.counts["out_of_order"] > 100 and ledger.counts["races"] > 20


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrency_soak_three_replicas(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, run: Run, tmp_path: Path
) -> None:
    ledger = _concurrency(store_url(kind, request, tmp_path), run_dir, run, replicas=3, observes=12, clients=32)
    assert ledger.counts["races"] > 100


# -- crash: SIGKILL mid-load loses no acknowledged update -------------------------------------------


async def _until_killed(
    url: str, ledger: Ledger, *, streams: int, clients: int, kill: Any, acks: tuple[int, int]
) -> None:
    """Observe continuously; after ``acks[0]`` acknowledged updates call ``kill``, then go on for ``acks[1]`` more
    (0: stop). A request that fails (503, or no answer) is not acknowledged and is retried with the same body."""
    rng = random.Random(7)
    stop = asyncio.Event()

    def total() -> int:
        return sum(len(v) for v in ledger.acked.values())

    async def client(k: int, http: httpx.AsyncClient) -> None:
        mine = [f"k{k}-s{i}" for i in range(k, streams, clients)]
        seq = 0
        while not stop.is_set():
            seq += 1
            for stream in mine:
                rows = [[round(rng.gauss(50, 10), 3), round(rng.gauss(40, 8), 3)] for _ in range(rng.randint(1, 2))]
                ledger.sent[stream][seq] = rows
                while True:
                    try:
                        r = await http.post(f"/v1/streams/{stream}/observe", json={"seq": seq, "values": rows})
                    except httpx.HTTPError:
                        return  # the server is gone: this request was never acknowledged
                    if r.status_code != 503:
                        break
                    ledger.counts["unavailable"] += 1  # the store is down: retry, the same seq and body
                    await asyncio.sleep(0.05)
                assert r.status_code == 200, r.text
                ledger.acked[stream][seq] = r.json()

    async def killer() -> None:
        while total() < acks[0]:
            await asyncio.sleep(0.02)
        await asyncio.get_running_loop().run_in_executor(None, kill)
        ledger.counts["killed_at"] = total()
        while total() < ledger.counts["killed_at"] + acks[1]:
            await asyncio.sleep(0.02)
        stop.set()

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await asyncio.gather(killer(), *(client(k, http) for k in range(clients)))


def _check_after_crash(run: Run, ledger: Ledger, url: str) -> int:
    """Every acknowledged seq is stored; at most the one request in flight per stream went further."""
    acked_total = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for stream, sent in ledger.sent.items():
            acked = max(ledger.acked[stream], default=0)
            acked_total += acked
            r = http.get(f"/v1/streams/{stream}/state")
            stored = r.json() if r.status_code == 200 else {"seq": 0}
            assert acked <= stored["seq"] <= acked + 1, (stream, acked, stored["seq"])
            if stored["seq"] == 0:
                continue
            _, state = replay_stream(run, [sent[s] for s in range(1, stored["seq"] + 1)])
            assert state_mismatch(stored["state"], state) <= ATOL
            if acked and stored["seq"] == acked:  # the acknowledged answer is the one stored
                again = http.post(f"/v1/streams/{stream}/observe", json={"seq": acked, "values": sent[acked]})
                assert again.json() == ledger.acked[stream][acked] and again.headers["x-hiddenstate-replayed"] == "true"
    return acked_total


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sigkill_of_the_server_mid_load_loses_no_acknowledged_update(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, run: Run, tmp_path: Path
) -> None:
    url = store_url(kind, request, tmp_path)
    server = ServerProcess(run_dir, ["--store", url]).start()
    ledger = Ledger()
    try:
        asyncio.run(_until_killed(server.url, ledger, streams=100, clients=8, kill=server.kill, acks=(250, 0)))
        assert server.proc is not None and server.proc.returncode == -9
        server.start()  # the same store, the same port
        assert _check_after_crash(run, ledger, server.url) >= 250
    finally:
        server.stop()


def test_sigkill_of_redis_itself_loses_no_acknowledged_update(
    redis_server: RedisServer, run_dir: Path, run: Run
) -> None:
    """With appendfsync always, what Redis acknowledged is on disk: kill -9 Redis, restart it from its AOF."""
    url = redis_server.url(0, prefix=f"{uuid.uuid4().hex[:8]}:")
    ledger = Ledger()
    with ServerProcess(run_dir, ["--store", url]) as server:

        def kill_and_restart() -> None:
            redis_server.kill()
            redis_server.start()

        asyncio.run(_until_killed(server.url, ledger, streams=60, clients=4, kill=kill_and_restart, acks=(120, 60)))
        assert _check_after_crash(run, ledger, server.url) >= 180


# -- the command line ---------------------------------------------------------------------------------


def test_the_command_refuses_a_store_of_another_spec_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "states.db"
    gru = demo_run(tmp_path / "gru", layers=[("gru", 4)])
    from hiddenstate.serve import Service

    Service(ServedModel.from_run(load_run(gru)), open_store(f"sqlite://{db}")).store.close()
    done = subprocess.run(
        [sys.executable, "-m", "hiddenstate.serve", str(run_dir), "--store", f"sqlite://{db}", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: store sqlite://{db} holds states of spec fingerprint 'hs1-gru4-")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_register_adds_the_serve_command_to_a_typer_app() -> None:
    app = typer.Typer()

    @app.command()
    def other() -> None:
        """Another command, so that typer keeps subcommands."""

    register(app)
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--store", "--sync", "--durability", "--max-batch", "--max-wait-ms", "--ttl"):
        assert flag in result.output


def test_unusable_stores_are_refused_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    from hiddenstate.errors import ServeError
    from hiddenstate.serve import build_service

    junk = tmp_path / "junk.db"
    junk.write_text("this is not a database\n")
    with pytest.raises(ServeError, match=rf"^store sqlite://{junk}: cannot be opened: file is not a database$"):
        build_service(run_dir, f"sqlite://{junk}")
    with pytest.raises(ServeError, match=r"^store redis://127\.0\.0\.1:1/0: cannot be used: Error 111 connecting"):
        build_service(run_dir, "redis://127.0.0.1:1/0")
    service = build_service(run_dir)  # the default: states.db in the run directory
    assert service.store.url == f"sqlite://{run_dir.resolve() / 'states.db'}"
    service.store.close()

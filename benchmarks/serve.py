"""Benchmark of the streaming service beside a no-op FastAPI endpoint, measured in one run.

    python benchmarks/serve.py                    # about four minutes
    python benchmarks/serve.py --duration 5 --store redis
    python benchmarks/serve.py --workers 2 --bulk-threads 4 --no-single

Scenarios, each against the real service and against a no-op app that parses the same body
with the same pydantic models and does no work (both under uvicorn; 1 worker process each
unless --workers / --noop-workers say otherwise):

  single   POST /v1/streams/{id}/observe, one row, over 1,000 streams, 32 connections
  bulk xS  POST /v1/observe, every request 1,000 streams x S rows (S from --bulk-steps), one
           connection per load thread (each thread its own 1,000 streams)

The load comes from ``wrk`` (Debian package ``wrk``) with a Lua script that keeps each stream's
seq in order, so every request is a real advance (any non-2xx answer is reported). wrk is C
and light, so it steals little of the server's CPU. The figures go to docs/serving.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable (the no-op's worker processes)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from hiddenstate.serve.app import BulkBody, ObserveBody, StreamId, parse_body

COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")

# The rows are made once per stream (varied values), so that wrk spends its CPU on sending, not
# on formatting numbers: each request then only splices in its seq.
_ROWS_LUA = """
local function rows_of(s, steps)
  local rows = {{}}
  for t = 1, steps do
    local parts = {{}}
    for c = 1, {columns} do
      parts[c] = string.format("%.3f", 50 + 10 * math.sin(s * 0.37 + t * 0.11 + c))
    end
    rows[t] = "[" .. table.concat(parts, ",") .. "]"
  end
  return "[" .. table.concat(rows, ",") .. "]"
end
local counter = 0
function setup(thread)  -- runs in the main state; sets the global tid of each thread's own state
  thread:set("tid", counter)
  counter = counter + 1
end
tid = tid or 0
"""

_SINGLE_LUA = (
    _ROWS_LUA
    + """
local streams = {streams}
local k = 0
local values = nil
local first = true
request = function()
  if first then  -- wrk may build one request at start-up that it never sends: make it harmless
    first = false
    values = {{}}
    for s = 0, streams - 1 do values[s] = rows_of(s, 1) end
    return wrk.format("GET", "/healthz")
  end
  local s = k % streams
  local seq = math.floor(k / streams) + 1
  k = k + 1
  return wrk.format("POST", "/v1/streams/{prefix}" .. tid .. "-s" .. s .. "/observe",
    {{["Content-Type"] = "application/json"}}, '{{"seq":' .. seq .. ',"values":' .. values[s] .. '}}')
end
"""
)

_BULK_LUA = (
    _ROWS_LUA
    + """
local streams = {streams}
local n = 0
local heads, tails = nil, nil
local first = true
request = function()
  if first then  -- wrk may build one request at start-up that it never sends: make it harmless
    first = false
    heads, tails = {{}}, {{}}
    for s = 0, streams - 1 do
      heads[s + 1] = '{{"id":"{prefix}' .. tid .. '-' .. s .. '","seq":'
      tails[s + 1] = ',"values":' .. rows_of(s, {steps}) .. '}}'
    end
    return wrk.format("GET", "/healthz")
  end
  n = n + 1
  local items = {{}}
  for s = 1, streams do items[s] = heads[s] .. n .. tails[s] end
  local body = '{{"streams":[' .. table.concat(items, ",") .. ']}}'
  return wrk.format("POST", "/v1/observe", {{["Content-Type"] = "application/json"}}, body)
end
"""
)

_DONE_LUA = """
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def noop_app() -> FastAPI:
    """A FastAPI app with the service's routes and request parsing that does no work."""
    app = FastAPI()

    @app.post("/v1/streams/{stream_id}/observe")
    async def observe(stream_id: StreamId, request: Request) -> Response:
        await parse_body(request, ObserveBody)
        return Response(b'{"ok":true}', media_type="application/json")

    @app.post("/v1/observe")
    async def observe_bulk(request: Request) -> Response:
        await parse_body(request, BulkBody)
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def noop_worker_app() -> FastAPI:
    """The no-op app with the process tuning that `hiddenstate serve` applies, so both run alike."""
    import gc

    app = noop_app()
    gc.collect()
    gc.freeze()
    return app


def wrk(url: str, lua: str, *, threads: int, connections: int, duration: float, folder: Path) -> dict[str, Any]:
    script = folder / f"load-{time.monotonic_ns()}.lua"
    script.write_text(lua + _DONE_LUA)
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = re.search(r"^RESULT (.*)$", out, re.M)
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(found.group(1))
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def batch_totals(url: str) -> tuple[float, float]:
    """Streams in all micro-batches so far, and the number of batches, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^hiddenstate_batch_size_sum (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^hiddenstate_batch_size_count (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def start_noop(port: int, folder: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    log = open(folder / "noop.log", "wb")
    cmd = [sys.executable, __file__, "--noop-port", str(port), "--noop-workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the no-op server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--bulk-steps",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 4, 16],
        help="rows per stream in each bulk request; one scenario per value (default 1,4,16)",
    )
    parser.add_argument("--no-single", action="store_true", help="only the bulk scenarios")
    parser.add_argument("--bulk-threads", type=int, default=2, help="concurrent bulk requests (one per wrk thread)")
    parser.add_argument("--hidden", default="lstm:32,lstm:32", help="the demo model's layers")
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument(
        "--workers", type=int, default=1, help="service worker processes (--workers of hiddenstate serve; default 1)"
    )
    parser.add_argument("--noop-workers", type=int, default=1, help="no-op worker processes (default 1)")
    parser.add_argument("--noop-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.noop_port:  # the child process that serves the no-op app
        import uvicorn

        if args.noop_workers > 1:
            uvicorn.run(
                "benchmarks.serve:noop_worker_app", factory=True, host="127.0.0.1", port=args.noop_port,
                workers=args.noop_workers, log_level="warning", access_log=False,
            )  # fmt: skip
        else:
            uvicorn.run(noop_worker_app(), host="127.0.0.1", port=args.noop_port, log_level="warning", access_log=False)
        return
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install wrk")

    from hiddenstate.serve.testing import RedisServer, ServerProcess, demo_run, free_port

    layers = [(kind, int(size)) for kind, size in (part.split(":") for part in args.hidden.split(","))]
    folder = Path(tempfile.mkdtemp(prefix="hiddenstate-bench-"))
    redis_server = None
    try:
        run_dir = demo_run(folder / "run", layers=layers, inputs=COLUMNS)
        if args.store == "redis":
            redis_server = RedisServer().start()
            store = redis_server.url(0)
        else:
            store = f"sqlite://{folder / 'states.db'}"
        flags = ["--store", store, "--sync", args.sync, "--max-wait-ms", str(args.max_wait_ms)]
        flags += ["--workers", str(args.workers)]
        noop_port = free_port()
        noop = start_noop(noop_port, folder, args.noop_workers)
        server = ServerProcess(run_dir, flags).start()
        noop_url = f"http://127.0.0.1:{noop_port}"
        scenarios = [] if args.no_single else [("single", _SINGLE_LUA, {}, 1, args.connections, 1)]
        for steps in args.bulk_steps:
            scenarios.append(
                (f"bulk x{steps}", _BULK_LUA, {"steps": steps}, args.bulk_threads, args.bulk_threads, steps)
            )
        rows = []
        try:
            for name, template, extra, threads, conns, steps in scenarios:
                for target, url in (("no-op", noop_url), ("service", server.url)):
                    # Each wrk run starts its seqs at 1, so each one observes streams of its own.
                    for phase, duration in (("warm", args.warmup), ("run", args.duration)):
                        prefix = f"{name.replace(' ', '')}-{target}-{phase}-"
                        lua = template.format(streams=args.streams, columns=len(COLUMNS), prefix=prefix, **extra)
                        before = batch_totals(server.url)
                        r = wrk(url, lua, threads=threads, connections=conns, duration=duration, folder=folder)
                    after = batch_totals(server.url)
                    # each worker process answers /metrics with its own counters: no mean over all of them
                    batches = max(after[1] - before[1], 1)
                    r["mean_batch"] = (after[0] - before[0]) / batches if args.workers == 1 else None
                    r.update(scenario=name, target=target, connections=conns)
                    r["stream_steps"] = r["rate"] * (args.streams * steps if name.startswith("bulk") else 1)
                    rows.append(r)
                    print(
                        f"{name:9s} {target:7s} c={conns:<3d} {r['rate']:9.1f} req/s  {r['stream_steps']:11.0f} "
                        f"stream-steps/s  p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  "
                        f"non-2xx {r['non2xx']}  errors {r['socket_errors']}"
                        + (f"  mean batch {r['mean_batch']:.1f}" if target == "service" and r["mean_batch"] else ""),
                        flush=True,
                    )
        finally:
            server.stop()
            noop.terminate()
            try:
                noop.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(noop.pid, 9)
        print()
        print(f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.machine()}, {os.cpu_count()} CPUs; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other processes share the CPUs)")  # fmt: skip
        print(
            f"model: {len(COLUMNS)} inputs/targets, layers {args.hidden}; store "
            f"{'redis (appendfsync always)' if args.store == 'redis' else f'sqlite (sync {args.sync})'}; "
            f"{args.streams} streams; service {args.workers} worker process(es), no-op {args.noop_workers}"
            + ("; mean batch n/a (each worker counts its own)" if args.workers > 1 else "")
        )
        print(f"{'scenario':9s} {'conns':>5s} {'no-op req/s':>12s} {'service req/s':>14s} {'ratio':>6s} "
              f"{'stream-steps/s':>15s} {'p50 ms':>7s} {'p99 ms':>7s} {'batch':>6s}")  # fmt: skip
        for name, *_ in scenarios:
            noop_r = next(r for r in rows if r["scenario"] == name and r["target"] == "no-op")
            svc = next(r for r in rows if r["scenario"] == name and r["target"] == "service")
            print(
                f"{name:9s} {svc['connections']:5d} {noop_r['rate']:12.1f} {svc['rate']:14.1f} "
                f"{svc['rate'] / noop_r['rate']:6.2f} {svc['stream_steps']:15.0f} {svc['p50_us'] / 1000:7.2f} "
                f"{svc['p99_us'] / 1000:7.2f} {svc['mean_batch'] or float('nan'):6.1f}"
            )
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

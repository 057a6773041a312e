"""onnxruntime against the library's torch and fused backends, on the exported graph.

Three scenarios per configuration, every engine on one thread, timed interleaved (torch, fused,
onnxruntime, torch, ...) so a burst of load from other programs hits all three alike:

- one stream, one step per call (the serving latency of one stream);
- one step of 1,000 streams in one call (the service's micro-batch);
- a chunk of 96 steps for the configuration's batch.

Before timing, the three engines' outputs are compared on the same inputs and states.

    python -m benchmarks.export                 # seed and wide, 7 repeats
    python -m benchmarks.export --serve 500     # and one stream's observe latency through the service
    python -m benchmarks.export --tiny          # proves it runs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SEED, TINY, WIDE, Config, environment, table

SCENARIOS = ("1 stream, 1 step", "1,000 streams, 1 step", "chunk of 96 steps")


def _shape(cfg: Config, scenario: str, tiny: bool) -> tuple[int, int]:
    if scenario == SCENARIOS[0]:
        return 1, 1
    if scenario == SCENARIOS[1]:
        return (8 if tiny else 1000), 1
    return cfg.batch, (4 if tiny else 96)


def _calls(cfg: Config, scenario: str, tiny: bool) -> int:
    if tiny:
        return 2
    big = max(cfg.layers) >= 64
    calls = {SCENARIOS[0]: (2000, 300), SCENARIOS[1]: (60, 10), SCENARIOS[2]: (60, 5)}[scenario]
    return calls[1] if big else calls[0]


def _engines(cfg: Config, folder: Path, batch: int, steps: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """Each engine as ``step(x) -> y``, carrying its own state from call to call."""
    import torch

    import hiddenstate as hs
    from hiddenstate.errors import ConfigError
    from hiddenstate.interop.onnx import OnnxStream, export_onnx

    torch.manual_seed(0)
    model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers]).eval()
    path = folder / f"{cfg.name}.onnx"
    if not path.exists():
        export_onnx(model, path)

    def torch_engine(m: Any) -> Callable[[np.ndarray], Any]:
        holder: dict[str, Any] = {"state": hs.State.zeros(m.state_spec, batch)}

        def step(x: np.ndarray) -> Any:
            with torch.inference_mode():
                y, holder["state"] = m(torch.from_numpy(x), holder["state"])
            return y.numpy()

        return step

    engines = {"torch backend": torch_engine(model)}
    fused = copy.deepcopy(model)
    try:
        fused.rnn.set_backend("fused")
        engines["fused backend"] = torch_engine(fused)
    except ConfigError as e:  # no C compiler: the table says so
        print(f"fused backend unavailable: {e}")
    stream = OnnxStream(path, batch_size=batch, threads=1)
    stream.reset()
    stream.state = {n: np.zeros((batch, h), np.float32) for n, h in stream._hidden.items()}  # zeros, as torch
    engines["onnxruntime"] = stream.step
    return engines


def _time(step: Callable[[np.ndarray], Any], x: np.ndarray, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step(x)
    return (time.perf_counter() - start) / calls


def run(configs: Sequence[Config], repeats: int, tiny: bool) -> dict[str, dict[str, dict[str, float]]]:
    import torch

    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for cfg in configs:
            for scenario in SCENARIOS:
                batch, steps = _shape(cfg, scenario, tiny)
                x = np.random.default_rng(0).standard_normal((batch, steps, cfg.n_in)).astype(np.float32)
                engines = _engines(cfg, folder, batch, steps)
                outs = {label: step(x) for label, step in engines.items()}  # also the warm-up
                ref = outs["torch backend"]
                parity = {label: float(np.abs(y - ref).max()) for label, y in outs.items()}
                calls = _calls(cfg, scenario, tiny)
                times: dict[str, list[float]] = {label: [] for label in engines}
                for _ in range(repeats):
                    for label, step in engines.items():
                        times[label].append(_time(step, x, calls))
                results[f"{cfg.name}|{scenario}"] = {
                    label: {"seconds": statistics.median(t), "rows": batch * steps, "diff": parity[label]}
                    for label, t in times.items()
                }
    return results


def _run_dir(cfg: Config, path: Path) -> Path:
    """A run of the configuration's model at torch's default initialisation, with a fitted scaler.

    (Not ``serve.testing.demo_run``: its weights, of std 0.4, make the wide stack chaotic, so
    float32 rounding alone moves it by more than the export check's 1e-5; see docs/export.md.)
    """
    import torch

    import hiddenstate as hs
    from hiddenstate.data.scaling import StandardScaler
    from hiddenstate.runs.run import save_run

    torch.manual_seed(0)
    model = hs.SequenceModel(cfg.n_in, cfg.n_in, [hs.LSTM(h) for h in cfg.layers]).eval()
    columns = [f"x{i}" for i in range(cfg.n_in)]
    data = 50 + 10 * np.random.default_rng(0).standard_normal((500, cfg.n_in))
    save_run(path, model, scaler=StandardScaler.fit(data, columns=columns), inputs=columns, targets=columns)
    return path


def serve_latency(cfg: Config, observes: int, tiny: bool) -> dict[str, dict[str, float]]:
    """One stream's one-row observes over HTTP (a real uvicorn server in this process, SQLite with
    ``sync normal``), the torch and onnx engines alternating in blocks of 25: median and p99 ms."""
    import httpx

    from hiddenstate.serve.app import create_app
    from hiddenstate.serve.command import build_service
    from hiddenstate.serve.testing import ThreadServer

    latencies: dict[str, list[float]] = {"torch": [], "onnx": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = _run_dir(cfg, Path(tmp) / "run")
        servers, clients, seqs = {}, {}, {}
        try:
            for engine in latencies:
                service = build_service(run_dir, f"sqlite://{Path(tmp) / engine}.db", sync="normal", engine=engine)
                servers[engine] = ThreadServer(create_app(service)).__enter__()
                clients[engine] = httpx.Client(base_url=servers[engine].url, timeout=30)
                seqs[engine] = 0
            rng = np.random.default_rng(0)
            block = 2 if tiny else 25
            for _ in range(max(1, observes // block)):
                for engine, client in clients.items():
                    for _ in range(block):
                        seqs[engine] += 1
                        body = {"seq": seqs[engine], "values": (50 + 10 * rng.standard_normal((1, cfg.n_in))).tolist()}
                        start = time.perf_counter()
                        r = client.post("/v1/streams/s1/observe", json=body)
                        latencies[engine].append(time.perf_counter() - start)
                        r.raise_for_status()
        finally:
            for engine in list(servers):
                clients[engine].close()
                servers[engine].__exit__(None, None, None)
    return {
        engine: {"median_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * float(np.percentile(t, 99)), "n": len(t)}
        for engine, t in latencies.items()
    }


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 1e-2 else f"{s * 1e3:.1f} ms"


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else (f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}")


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="seed,wide", help="comma-separated, of seed, wide")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per engine (median reported)")
    p.add_argument("--tiny", action="store_true", help="minimal sizes, one repeat: proves it runs")
    p.add_argument(
        "--serve",
        type=int,
        default=0,
        metavar="N",
        help="also time N one-row observes per engine through the HTTP service",
    )
    args = p.parse_args(argv)
    configs = [TINY] if args.tiny else [{"seed": SEED, "wide": WIDE}[n] for n in args.configs.split(",")]
    results = run(configs, 1 if args.tiny else args.repeats, args.tiny)
    print(environment() + " · one thread per engine")
    rows = []
    for key, engines in results.items():
        name, scenario = key.split("|")
        base = engines["torch backend"]["seconds"]
        for label, r in engines.items():
            rows.append(
                [
                    name,
                    scenario,
                    label,
                    _fmt_time(r["seconds"]),
                    _fmt_rate(r["rows"] / r["seconds"]),
                    f"{base / r['seconds']:.2f}x",
                    f"{r['diff']:.1e}",
                ]
            )
    print(table(["config", "scenario", "engine", "per call", "stream-steps/s", "vs torch", "max |y - torch|"], rows))
    if args.serve:
        print("\nOne stream's one-row observe over HTTP (uvicorn in-process, SQLite sync normal):")
        rows = []
        for cfg in configs:
            found = serve_latency(cfg, args.serve, args.tiny)
            base = found["torch"]["median_ms"]
            rows += [
                [
                    cfg.name,
                    e,
                    r["n"],
                    f"{r['median_ms']:.2f} ms",
                    f"{r['p99_ms']:.2f} ms",
                    f"{base / r['median_ms']:.2f}x",
                ]
                for e, r in found.items()
            ]
            results[f"serve|{cfg.name}"] = found
        print(table(["config", "engine", "observes", "median", "p99", "vs torch"], rows))
    return results


if __name__ == "__main__":
    main()

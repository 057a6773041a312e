"""What every benchmark script shares: configurations, data, candidates, interleaved timing,
one worker process per candidate (for honest peak RSS), and tables.

A *candidate* is one way to do the scenario's work (``hs.Trainer``, a hand-written PyTorch loop,
Keras). Each lives in its own worker process, so its peak RSS (``ru_maxrss``) is its own, and the
parent runs them interleaved, ``A, B, C, A, B, C, ...``: a burst of load from other programs on
the machine hits every candidate alike, and the table shows the median of the repeats. Ratios
measured this way stay fair on a shared machine; absolute figures do not.

With ``isolate=False`` (the smoke tests) the candidates run in this process instead; peak RSS is
then not per candidate and shows as n/a.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# -- configurations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One model-and-data setting. ``chunks`` TBPTT chunks make one timed repeat (an epoch)."""

    name: str
    batch: int
    steps: int
    layers: tuple[int, ...]
    n_in: int = 2
    dropout: float = 0.2
    chunks: int = 20
    lr: float = 1e-3

    @property
    def describe(self) -> str:
        lstm = " + ".join(f"LSTM({h})" for h in self.layers)
        return f"batch {self.batch}, {self.steps} steps, {self.n_in}->{self.n_in}, {lstm}"

    @property
    def sample_steps(self) -> int:
        """Work in one repeat: lanes x steps x chunks."""
        return self.batch * self.steps * self.chunks


SEED = Config("seed", batch=10, steps=96, layers=(8, 8), chunks=60)
WIDE = Config("wide", batch=64, steps=96, layers=(128, 64), chunks=6)
LONG = Config("long", batch=10, steps=960, layers=(8, 8), chunks=12)
CONFIGS = {c.name: c for c in (SEED, WIDE, LONG)}
TINY = Config("tiny", batch=2, steps=4, layers=(3, 3), chunks=2)  # smoke tests


def pick_configs(names: str, tiny: bool) -> list[Config]:
    if tiny:
        return [TINY]
    return [CONFIGS[n] for n in names.split(",")]


def series(cfg: Config, seed: int = 0) -> np.ndarray:
    """One synthetic series (daily and weekly seasonality plus noise), standardised, exactly
    long enough that ``StatefulBatches`` lays it into ``cfg.chunks`` full chunks of every lane."""
    import hiddenstate as hs

    rows = cfg.batch * cfg.steps * cfg.chunks + 2
    a = hs.synthetic_dataset(n_steps=rows, seed=seed).array()[:, : cfg.n_in]
    return (a - a.mean(0)) / a.std(0)  # (rows, n_in)


def lane_chunks(cfg: Config) -> tuple[Any, list[Any], list[Any]]:
    """``StatefulBatches`` of the series, and its chunks' ``x`` and ``y`` tensors (what every
    candidate trains on, so all see the same data)."""
    import hiddenstate as hs

    a = series(cfg)
    batches = hs.StatefulBatches([a], [a], batch_size=cfg.batch, steps=cfg.steps)
    assert len(batches) == cfg.chunks and batches.num_lanes == cfg.batch, batches
    return batches, [b.x for b in batches], [b.y for b in batches]


def trainer_threads(layers: Sequence[int]) -> int:
    """The thread count ``hs.Trainer`` picks for these LSTM layers (``TrainConfig.threads=None``)."""
    import hiddenstate as hs
    from hiddenstate.train.trainer import default_threads

    return default_threads(hs.StateSpec([("lstm", h) for h in layers]))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None and importlib.util.find_spec("tensorflow") is not None


def import_keras() -> Any:
    """Keras 3 on the TensorFlow backend, quiet."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow")
    return keras


# -- candidates in workers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A candidate to build in a worker: ``factory(**kwargs)`` (a module-level callable)."""

    label: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    label: str
    units: int = 0  # work per repeat (sample-steps, or steps for latency candidates)
    seconds: list[float] = field(default_factory=list)  # wall clock, per repeat
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time, per repeat
    per_call: list[float] = field(default_factory=list)  # per call, all repeats (latency candidates)
    rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Median throughput: units per wall-clock second."""
        return self.units / self.median_s

    @property
    def cpu_rate(self) -> float:
        """Median units per CPU second of the candidate's process. On a loaded machine this is
        steadier than the wall clock for single-threaded runs (it leaves out the time spent
        waiting for a core); with several threads it adds theirs up."""
        return self.units / statistics.median(self.cpu_seconds)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _run_once(candidate: Any) -> tuple[int, float, float, list[float], dict[str, Any]]:
    cpu, start = time.process_time(), time.perf_counter()
    out = candidate.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    per_call: list[float] = []
    if isinstance(out, tuple):  # latency candidates: (units, per-call seconds)
        out, per_call = out
    extra = getattr(candidate, "extra", {})
    return int(out), seconds, cpu, per_call, dict(extra)


def _worker(conn: Any) -> None:
    candidate = None
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "setup":
                candidate = None
                candidate = msg[1](**msg[2])
                conn.send(("ok", None))
            elif msg[0] == "run":
                conn.send(("ok", _run_once(candidate)))
            elif msg[0] == "rss":
                conn.send(("ok", peak_rss_mb()))
            else:
                conn.send(("ok", None))
                return
        except Exception as e:  # report it in the parent, with the candidate's traceback
            import traceback

            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class Worker:
    """A candidate in its own process, or in this one with ``isolate=False``."""

    def __init__(self, isolate: bool) -> None:
        self.isolate = isolate
        self.candidate: Any = None
        if isolate:
            ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited, honest RSS
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            self.proc.start()

    def _call(self, *msg: Any) -> Any:
        self.conn.send(msg)
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"benchmark worker failed: {value}")
        return value

    def setup(self, spec: Spec) -> None:
        if self.isolate:
            self._call("setup", spec.factory, spec.kwargs)
        else:
            self.candidate = spec.factory(**spec.kwargs)

    def run(self) -> tuple[int, float, float, list[float], dict[str, Any]]:
        return self._call("run") if self.isolate else _run_once(self.candidate)

    def rss(self) -> float | None:
        return self._call("rss") if self.isolate else None

    def close(self) -> None:
        if self.isolate:
            self._call("stop")
            self.proc.join(timeout=30)


def measure(
    specs: Sequence[Spec],
    repeats: int,
    warmup: int = 1,
    isolate: bool = True,
    workers: dict[str, Worker] | None = None,
) -> dict[str, Result]:
    """Build each candidate in its own worker, then run them interleaved ``warmup + repeats``
    times (warm-up rounds are not kept). Returns one Result per label.

    ``workers`` (label -> Worker) keeps processes alive across calls (a sweep sets up new
    candidates in the same processes); without it each call starts and ends its own."""
    own = workers is None
    pool = {} if workers is None else workers
    for s in specs:
        if s.label not in pool:
            pool[s.label] = Worker(isolate)
    results = {s.label: Result(s.label) for s in specs}
    try:
        for s in specs:
            pool[s.label].setup(s)
        for r in range(warmup + repeats):
            for s in specs:
                units, seconds, cpu, per_call, extra = pool[s.label].run()
                if r >= warmup:
                    res = results[s.label]
                    res.units = units
                    res.seconds.append(seconds)
                    res.cpu_seconds.append(cpu)
                    res.per_call.extend(per_call)
                    res.extra = extra
        for s in specs:
            results[s.label].rss_mb = pool[s.label].rss()
    finally:
        if own:
            for w in pool.values():
                w.close()
    return results


# -- the environment and tables -----------------------------------------------------------------


def environment() -> str:
    """One line: date, machine, load, versions; printed above every table."""
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    parts = [
        _dt.date.today().isoformat(),
        f"{platform.machine()} {cores()} cores",
        f"load avg {load}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
    ]
    if keras_available():
        parts.append(f"keras {_version('keras')} / tensorflow {_version('tensorflow-cpu') or _version('tensorflow')}")
    return " · ".join(parts)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads well in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep, *(fmt(r) for r in cells[1:])])


def rate(x: float) -> str:
    """Sample-steps per second, short: 1.05M, 302k, 950."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def rss(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:.0f} MB"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


THROUGHPUT_HEADERS = ["config", "candidate", "sample-steps/s", "vs hand loop", "(CPU time)", "vs Keras", "peak RSS"]


def throughput_rows(cfg: Config, results: dict[str, Result], hand: str, keras: str) -> list[list[Any]]:
    """One THROUGHPUT_HEADERS row per candidate: rates and ratios to the ``hand`` and ``keras`` labels."""
    base, base_cpu = results[hand].rate, results[hand].cpu_rate
    keras_rate = results[keras].rate if keras in results else None
    return [
        [
            cfg.name,
            label,
            rate(r.rate),
            ratio(r.rate, base),
            ratio(r.cpu_rate, base_cpu),
            ratio(r.rate, keras_rate) if keras_rate else "",
            rss(r.rss_mb),
        ]
        for label, r in results.items()
    ]


def base_parser(description: str, configs: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--configs", default=configs, help=f"comma-separated, of {', '.join(CONFIGS)} (default: {configs})")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per candidate (median reported)")
    p.add_argument("--no-keras", action="store_true", help="leave Keras out even when it is installed")
    p.add_argument("--no-fused", action="store_true", help="leave the fused backend out")
    p.add_argument("--threads", type=int, help="CPU threads for every candidate (default: what hs.Trainer picks)")
    p.add_argument("--tiny", action="store_true", help="minimal sizes, one repeat, in-process: proves it runs")
    return p


def with_chunks(cfg: Config, chunks: int) -> Config:
    return replace(cfg, chunks=chunks)

"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

The service needs counters and histograms only, so a hundred lines beat a dependency::

    hiddenstate_requests_total{endpoint="observe",status="200"} 1024
    hiddenstate_request_seconds_bucket{endpoint="observe",le="0.005"} 998
    hiddenstate_batch_size_bucket{le="32"} 40
    hiddenstate_observations_total{outcome="replayed"} 3
    hiddenstate_streams 1000

Updates come from the event loop and the worker thread; one lock keeps them whole.

With ``hiddenstate serve --workers N`` each worker process keeps the same counters in
prometheus_client's multiprocess files instead (:class:`SharedMetrics`), and whichever worker
answers ``/metrics`` sums every worker's.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

from hiddenstate.errors import ConfigError

__all__ = ["MULTIPROC_ENV", "Metrics", "SharedMetrics"]

#: prometheus_client's own variable: the folder of its multiprocess files, set before it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {self.total:.9g}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """The service's counters and histograms; :meth:`render` gives the Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._outcomes: dict[str, int] = defaultdict(int)
        self._steps = 0
        self._batch_size = _Histogram(SIZE_BUCKETS)
        self._batch_seconds = _Histogram(LATENCY_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, str(status))] += 1
            hist = self._latency.get(endpoint)
            if hist is None:
                hist = self._latency[endpoint] = _Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self._batch_size.observe(size)
            self._batch_seconds.observe(seconds)

    def outcome(self, kind: str, steps: int = 0, count: int = 1) -> None:
        with self._lock:
            self._outcomes[kind] += count
            self._steps += steps

    def outcomes(self, counts: dict[str, int], steps: int = 0) -> None:
        """Several outcomes at once (a micro-batch's), under one lock."""
        with self._lock:
            for kind, n in counts.items():
                self._outcomes[kind] += n
            self._steps += steps

    def render(self, *, streams: int | None = None, info: dict[str, str] | None = None) -> str:
        """The whole exposition; ``streams`` is the store's current count (a gauge)."""
        lines: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("hiddenstate_requests_total", "counter", "HTTP requests by endpoint and status code.")
            for (endpoint, status), n in sorted(self._requests.items()):
                lines.append(f'hiddenstate_requests_total{{endpoint="{_escape(endpoint)}",status="{status}"}} {n}')
            head("hiddenstate_request_seconds", "histogram", "HTTP request latency in seconds, by endpoint.")
            for endpoint, hist in sorted(self._latency.items()):
                lines += hist.lines("hiddenstate_request_seconds", f'endpoint="{_escape(endpoint)}"')
            head(
                "hiddenstate_batch_size",
                "histogram",
                "Streams per micro-batch (one model call per step count, one commit).",
            )
            lines += self._batch_size.lines("hiddenstate_batch_size", "")
            head("hiddenstate_batch_seconds", "histogram", "Time to read, advance and commit one micro-batch.")
            lines += self._batch_seconds.lines("hiddenstate_batch_seconds", "")
            head(
                "hiddenstate_observations_total",
                "counter",
                "Stream observations by outcome (advanced, replayed, gap, conflict, rejected, nonfinite, cas_retry).",
            )
            for kind, n in sorted(self._outcomes.items()):
                lines.append(f'hiddenstate_observations_total{{outcome="{kind}"}} {n}')
            head("hiddenstate_stream_steps_total", "counter", "Rows advanced through the model, all streams together.")
            lines.append(f"hiddenstate_stream_steps_total {self._steps}")
        if streams is not None:
            head("hiddenstate_streams", "gauge", "Streams held by the store.")
            lines.append(f"hiddenstate_streams {streams}")
        if info:
            head("hiddenstate_model_info", "gauge", "The served model; always 1.")
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(info.items()))
            lines.append(f"hiddenstate_model_info{{{labels}}} 1")
        return "\n".join(lines) + "\n"


class SharedMetrics(Metrics):
    """:class:`Metrics` kept in prometheus_client's multiprocess mode, so that ``/metrics`` sums every
    worker process of ``--workers N``.

    Each process writes its counters and histograms to its own memory-mapped files in the folder
    named by ``PROMETHEUS_MULTIPROC_DIR`` (set before prometheus_client is first imported: the
    command sets it before it starts the workers); :meth:`render` reads all of them. The streams
    gauge and the model info come from the store and the model, the same in every worker, and are
    added once.
    """

    def __init__(self) -> None:
        super().__init__()
        from hiddenstate._extras import require

        prometheus = require("prometheus_client", "serve")
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder or not os.path.isdir(folder):
            raise ConfigError(f"{MULTIPROC_ENV} must name a folder for SharedMetrics, got {folder!r}")
        self._folder = folder
        self._prometheus = prometheus
        counter, histogram = prometheus.Counter, prometheus.Histogram
        self._p_requests = counter(
            "hiddenstate_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=None
        )
        self._p_latency = histogram(
            "hiddenstate_request_seconds",
            "HTTP request latency in seconds, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._p_batch_size = histogram(
            "hiddenstate_batch_size",
            "Streams per micro-batch (one model call per step count, one commit).",
            buckets=SIZE_BUCKETS,
            registry=None,
        )
        self._p_batch_seconds = histogram(
            "hiddenstate_batch_seconds",
            "Time to read, advance and commit one micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._p_outcomes = counter(
            "hiddenstate_observations",
            "Stream observations by outcome (advanced, replayed, gap, conflict, rejected, nonfinite, cas_retry).",
            ["outcome"],
            registry=None,
        )
        self._p_steps = counter(
            "hiddenstate_stream_steps", "Rows advanced through the model, all streams together.", registry=None
        )

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self._p_requests.labels(endpoint, str(status)).inc()
        self._p_latency.labels(endpoint).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self._p_batch_size.observe(size)
        self._p_batch_seconds.observe(seconds)

    def outcome(self, kind: str, steps: int = 0, count: int = 1) -> None:
        self._p_outcomes.labels(kind).inc(count)
        if steps:
            self._p_steps.inc(steps)

    def outcomes(self, counts: dict[str, int], steps: int = 0) -> None:
        for kind, n in counts.items():
            self._p_outcomes.labels(kind).inc(n)
        if steps:
            self._p_steps.inc(steps)

    def render(self, *, streams: int | None = None, info: dict[str, str] | None = None) -> str:
        """Every worker's counters summed (prometheus_client's exposition), then the gauges."""
        from prometheus_client import multiprocess

        registry = self._prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._folder)
        text = self._prometheus.generate_latest(registry).decode()
        lines: list[str] = []
        if streams is not None:
            lines += ["# HELP hiddenstate_streams Streams held by the store.", "# TYPE hiddenstate_streams gauge"]
            lines.append(f"hiddenstate_streams {streams}")
        if info:
            lines += [
                "# HELP hiddenstate_model_info The served model; always 1.",
                "# TYPE hiddenstate_model_info gauge",
            ]
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(info.items()))
            lines.append(f"hiddenstate_model_info{{{labels}}} 1")
        return text + "\n".join(lines) + ("\n" if lines else "")

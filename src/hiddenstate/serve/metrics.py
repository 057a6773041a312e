"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

The service needs counters and histograms only, so a hundred lines beat a dependency::

    hiddenstate_requests_total{endpoint="observe",status="200"} 1024
    hiddenstate_request_seconds_bucket{endpoint="observe",le="0.005"} 998
    hiddenstate_batch_size_bucket{le="32"} 40
    hiddenstate_observations_total{outcome="replayed"} 3
    hiddenstate_streams 1000

Updates come from the event loop and the worker thread; one lock keeps them whole.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["Metrics"]

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

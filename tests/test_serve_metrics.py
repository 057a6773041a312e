"""/metrics with ``hiddenstate serve --workers 2``: whichever worker answers, it sums both workers'
counters (prometheus_client's multiprocess mode), on a real server process."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from hiddenstate.serve.testing import ServerProcess, demo_run

OBSERVES = 40


def _value(text: str, pattern: str) -> float:
    found = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
    assert found, f"{pattern} not in:\n{text[:3000]}"
    return float(found.group(1))


def _per_process(folder: Path, scratch: Path) -> dict[str, float]:
    """Each worker's own count of 200 observes, read from its own multiprocess file alone."""
    counts: dict[str, float] = {}
    for file in sorted(folder.glob("counter_*.db")):
        alone = scratch / file.stem
        alone.mkdir(parents=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        text = generate_latest(registry).decode()
        pattern = r'hiddenstate_requests_total\{endpoint="observe",status="200"\}'
        counts[file.stem] = _value(text, pattern) if re.search(pattern, text) else 0.0
    return counts


def test_metrics_sum_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = demo_run(tmp_path / "run")
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))  # where the workers keep their counters
    args = ["--workers", "2", "--store", f"sqlite://{tmp_path / 'states.db'}"]
    with ServerProcess(run_dir, args) as server:
        for i in range(OBSERVES):  # a new connection each time, so that both workers take some
            r = httpx.post(f"{server.url}/v1/streams/m{i}/observe", json={"seq": 1, "values": [[50.0, 40.0]]})
            assert r.status_code == 200, r.text
        scrapes = [httpx.get(f"{server.url}/metrics").text for _ in range(10)]
        per_process = _per_process(folder, tmp_path / "scratch")
    observed = [
        name for name, v in per_process.items() if v > 0
    ]  # the workers that answered (an even split counts twice)
    assert len(observed) == 2, f"both workers should have answered observes: {per_process}"
    assert sum(per_process.values()) == OBSERVES
    for text in scrapes:  # each answered by either worker: the sum, never one worker's share
        assert _value(text, r'hiddenstate_requests_total\{endpoint="observe",status="200"\}') == OBSERVES
        assert _value(text, r'hiddenstate_observations_total\{outcome="advanced"\}') == OBSERVES
        assert _value(text, r"hiddenstate_stream_steps_total") == OBSERVES
        assert _value(text, r'hiddenstate_request_seconds_count\{endpoint="observe"\}') == OBSERVES
        assert _value(text, r'hiddenstate_batch_size_bucket\{le="\+Inf"\}') >= 2  # at least one batch each
        assert _value(text, r"hiddenstate_streams") == OBSERVES
        assert text.count("# TYPE hiddenstate_requests_total counter") == 1

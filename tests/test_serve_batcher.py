"""The micro-batcher: bounded batches, one item per stream, bounded wait, retries, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import hiddenstate as hs
from hiddenstate.serve.batcher import RETRY, MicroBatcher


class Recorder:
    """A ``process`` that records every batch it is given and answers each item with itself."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, items: list[tuple[str, int]]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.delay)
        return [f"{key}:{n}" for key, n in items]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_batches_are_bounded_and_hold_one_item_per_stream() -> None:
    rec = Recorder(delay=0.01)

    async def main() -> list[list[Any]]:
        b = MicroBatcher(rec, lambda item: item[0], max_batch=4, max_wait=0.001)
        b.start()
        # Stream "a" sends three items in a row; they must run in order, one per batch.
        items = [("a", 1), ("a", 2), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("a", 3), ("f", 1)]
        results = await asyncio.gather(*(b.submit([item]) for item in items))
        await b.stop()
        return results

    results = _run(main())
    assert [r[0] for r in results] == ["a:1", "a:2", "b:1", "c:1", "d:1", "e:1", "a:3", "f:1"]
    assert all(len(batch) <= 4 for batch in rec.batches)
    for batch in rec.batches:
        keys = [k for k, _ in batch]
        assert len(keys) == len(set(keys))
    order_a = [n for batch in rec.batches for k, n in batch if k == "a"]
    assert order_a == [1, 2, 3]
    assert rec.batches[0] == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]  # oldest first, a2 held back
    assert rec.threads == {"hiddenstate-batch_0"}  # one worker thread, off the event loop


def test_concurrent_requests_share_batches() -> None:
    rec = Recorder(delay=0.005)

    async def main() -> None:
        b = MicroBatcher(rec, lambda item: item[0], max_batch=64, max_wait=0.002)
        b.start()
        await asyncio.gather(*(b.submit([(f"s{i}", 1)]) for i in range(200)))
        await b.stop()

    _run(main())
    sizes = [len(batch) for batch in rec.batches]
    assert sum(sizes) == 200
    assert max(sizes) == 64 and len(sizes) < 20


def test_a_lone_request_waits_at_most_max_wait() -> None:
    rec = Recorder()

    async def main(max_wait: float) -> float:
        b = MicroBatcher(rec, lambda item: item[0], max_batch=8, max_wait=max_wait)
        b.start()
        await asyncio.sleep(0.01)
        began = time.perf_counter()
        await b.submit([("a", 1)])
        took = time.perf_counter() - began
        await b.stop()
        return took

    assert 0.05 <= _run(main(0.05)) < 0.5
    assert _run(main(0.0)) < 0.05


def test_a_bulk_submit_spans_batches_when_larger_than_max_batch() -> None:
    rec = Recorder()

    async def main() -> list[Any]:
        b = MicroBatcher(rec, lambda item: item[0], max_batch=3, max_wait=0.0)
        b.start()
        out = await b.submit([(f"s{i}", 1) for i in range(7)])
        await b.stop()
        return out

    assert _run(main()) == [f"s{i}:1" for i in range(7)]
    assert [len(batch) for batch in rec.batches] == [3, 3, 1]


def test_retried_items_come_back_before_later_items_of_their_stream() -> None:
    seen: list[tuple[str, int]] = []
    lost_once: set[tuple[str, int]] = set()

    def process(items: list[tuple[str, int]]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            seen.append(item)
            if item == ("a", 1) and item not in lost_once:
                lost_once.add(item)  # a compare-and-set lost to another replica
                out.append(RETRY)
            else:
                out.append(f"{item[0]}:{item[1]}")
        return out

    async def main() -> list[Any]:
        b = MicroBatcher(process, lambda item: item[0], max_batch=8, max_wait=0.0)
        b.start()
        out = await b.submit([("a", 1), ("b", 1)])
        await b.stop()
        return out

    assert _run(main()) == ["a:1", "b:1"]
    assert seen == [("a", 1), ("b", 1), ("a", 1)]


def test_a_failing_batch_fails_each_of_its_callers() -> None:
    def process(items: list[tuple[str, int]]) -> list[Any]:
        raise OSError("disk on fire")

    async def main() -> list[Any]:
        b = MicroBatcher(process, lambda item: item[0], max_batch=8, max_wait=0.001)
        b.start()
        out = await asyncio.gather(b.submit([("a", 1)]), b.submit([("b", 1)]), return_exceptions=True)
        await b.stop()
        return out

    out = _run(main())
    assert [str(e) for e in out] == ["disk on fire", "disk on fire"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(hs.ConfigError, match=r"^max_batch must be at least 1, got 0$"):
        MicroBatcher(Recorder(), lambda i: i, max_batch=0)
    with pytest.raises(hs.ConfigError, match=r"^max_wait must be between 0 and 10 seconds, got -1$"):
        MicroBatcher(Recorder(), lambda i: i, max_wait=-1)


def test_small_batches_run_on_the_loop_and_large_ones_in_the_worker() -> None:
    """inline_max: a batch of at most that many items runs on the event loop's own thread; a
    larger one in the worker thread. The results are the same either way."""

    async def main() -> tuple[str, list[Any], list[Any], set[str]]:
        rec = Recorder()
        b = MicroBatcher(rec, lambda item: item[0], max_batch=100, max_wait=0.001, inline_max=3)
        b.start()
        small = await b.submit([("a", 1), ("b", 1)])
        loop_thread = threading.current_thread().name
        assert rec.threads == {loop_thread}
        large = await b.submit([(f"s{i}", 1) for i in range(10)])
        await b.stop()
        return loop_thread, small, large, rec.threads

    loop_thread, small, large, threads = _run(main())
    assert small == ["a:1", "b:1"] and large == [f"s{i}:1" for i in range(10)]
    assert len(threads) == 2 and loop_thread in threads
    assert any(name.startswith("hiddenstate-batch") for name in threads)

"""The micro-batcher: concurrent requests for different streams become one batch.

Requests wait in one queue. A single worker takes a batch when it is free::

    queue:  a1 b1 a2 c1 d1 ...          (a1 = stream a, first request)
    batch:  a1 b1 c1 d1                 at most max_batch items, one per stream;
                                        a2 waits for the next batch, behind a1
    then:   process(batch) in the worker thread: one model call per step count,
            one store transaction (group commit)

The worker waits at most ``max_wait`` after the oldest queued item before it starts a batch
that is not full, so a lone request is delayed by no more than that. While a batch is being
processed new requests pile up, so under load batches grow by themselves. Items that
``process`` returns as :data:`RETRY` (a compare-and-set lost to another replica) go back to
the front of the queue and are read again, at most ``max_retries`` times: then ``give_up(item)``
is their result.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from hiddenstate.errors import ConfigError

__all__ = ["RETRY", "MicroBatcher"]

T = TypeVar("T")

#: What ``process`` returns for an item that must be tried again in a later batch.
RETRY: Any = object()


class _Group:
    """One submit: its items' results, and one future for the caller (not one per item: a bulk
    request of thousands of streams would otherwise spend more time on futures than on the model)."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.results: list[Any] = [None] * size
        self.remaining = size

    def settle(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.results)


class _Pending(Generic[T]):
    __slots__ = ("group", "index", "item", "key", "since", "tries")

    def __init__(self, item: T, key: Hashable, group: _Group, index: int, since: float) -> None:
        self.item, self.key, self.group, self.index, self.since = item, key, group, index, since
        self.tries = 0


class MicroBatcher(Generic[T]):
    """Batches items for ``process(items) -> results`` (same order), run in one worker thread.

    ``key(item)`` names the stream: a batch never holds two items of one key, and items of
    one key are processed in the order they were submitted. ``on_batch(size, seconds)`` is
    called after each batch (metrics). An item returned as :data:`RETRY` more than
    ``max_retries`` times gets ``give_up(item)`` as its result.
    """

    def __init__(
        self,
        process: Callable[[list[T]], list[Any]],
        key: Callable[[T], Hashable],
        *,
        max_batch: int = 1024,
        max_wait: float = 0.002,
        executor: ThreadPoolExecutor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        inline_max: int = 0,
        max_retries: int = 100,
        give_up: Callable[[T], Any] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        if not 0 <= max_wait <= 10:
            raise ConfigError(f"max_wait must be between 0 and 10 seconds, got {max_wait}")
        self.process = process
        self.key = key
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._owns_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="hiddenstate-batch")
        self.on_batch = on_batch
        # Batches of at most inline_max items run on the event loop itself: for a few streams the
        # hand-offs to the worker thread (and the GIL going back and forth between the two threads)
        # cost more than the batch. Larger batches go to the worker, so the loop keeps reading.
        self.inline_max = inline_max
        self.max_retries = max_retries
        self.give_up = give_up or _retries_exhausted
        self._queue: deque[_Pending[T]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker loop on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hiddenstate-batcher")

    async def stop(self) -> None:
        """Finish the queued items, then stop the worker loop."""
        while self._queue:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._owns_executor:
            self.executor.shutdown(wait=False)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, items: Sequence[T]) -> list[Any]:
        """Queue ``items`` (in order) and wait for their results."""
        if self._wake is None or self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if not items:
            return []
        group = _Group(asyncio.get_running_loop().create_future(), len(items))
        now, key = time.monotonic(), self.key
        self._queue.extend(_Pending(item, key(item), group, i, now) for i, item in enumerate(items))
        self._wake.set()
        return await group.future

    def _take(self) -> list[_Pending[T]]:
        """Up to max_batch items, one per key, oldest first; the rest keep their order."""
        batch: list[_Pending[T]] = []
        seen: set[Hashable] = set()
        kept: deque[_Pending[T]] = deque()
        while self._queue and len(batch) < self.max_batch:
            p = self._queue.popleft()
            if p.group.future.done():  # the caller went away (cancelled), or a sibling item failed
                continue
            if p.key in seen:
                kept.append(p)
            else:
                seen.add(p.key)
                batch.append(p)
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _run(self) -> None:
        wake = self._wake
        if wake is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                wake.clear()
                await wake.wait()
                continue
            if self.max_wait > 0 and len(self._queue) < self.max_batch:
                delay = self._queue[0].since + self.max_wait - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            batch = self._take()
            if not batch:
                continue
            began = time.perf_counter()
            try:
                items = [p.item for p in batch]
                if len(items) <= self.inline_max:
                    results = self.process(items)
                else:
                    results = await loop.run_in_executor(self.executor, self.process, items)
            except Exception as e:  # a failure of the store or a bug: every caller in the batch hears of it
                for p in batch:
                    if not p.group.future.done():
                        p.group.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - began)
            retry = []
            for p, result in zip(batch, results, strict=True):
                if result is RETRY and p.tries < self.max_retries:
                    p.tries += 1
                    retry.append(p)
                    continue
                if result is RETRY:
                    try:
                        result = self.give_up(p.item)
                    except Exception as e:  # the caller hears of it; the loop goes on
                        if not p.group.future.done():
                            p.group.future.set_exception(e)
                        continue
                p.group.settle(p.index, result)
            self._queue.extendleft(reversed(retry))


def _retries_exhausted(item: Any) -> Any:
    raise RuntimeError(f"gave up on {item!r} after its retries")  # the Service passes its own give_up

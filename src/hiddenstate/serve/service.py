"""The streaming service without HTTP: the sequence contract, micro-batches, state reads and writes.

Sequence contract, per stream (like Triton's correlation ids, but durable)::

    stored seq n     request seq n+1  -> advance through the rows, store, answer
                     request seq n    -> the stored answer again, nothing advances
                                         (the same body only; another body is a 409)
                     anything else    -> 409 SequenceGapError: expected seq n+1
    no stream        request seq 1    -> start from the model's initial state

A micro-batch is read in one call (from this process's record cache where a stream would
simply advance, else from the store), advanced in one model call per step count and written
back in one transaction, each stream by compare-and-set on the version it read.
A stream whose write lost the race (another replica advanced it) is read and judged again in
the next batch, so concurrent requests never lose an update, whichever replica they reach.
A stream the model turns non-finite is answered with an error and never stored.
Every retry is bounded: a stream that loses its compare-and-set ``cas_tries`` times in a row
(in a batch, or in a PUT or DELETE) is answered with a 503 StoreBusyError. A store that fails
raises StoreUnavailableError (a 503), and what it was asked to write was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import torch

from hiddenstate.errors import (
    ConfigError,
    NonFiniteError,
    ServeError,
    StateError,
    StoreBusyError,
    StoreUnavailableError,
    StreamNotFoundError,
    VersionConflictError,
)
from hiddenstate.serve import stages
from hiddenstate.serve.batcher import RETRY, MicroBatcher
from hiddenstate.serve.intake import Limits, Observation, validate
from hiddenstate.serve.metrics import Metrics
from hiddenstate.serve.served import ServedModel
from hiddenstate.serve.stages import Outcome
from hiddenstate.serve.stores import Record, StateStore, Write, new_version
from hiddenstate.state import State

__all__ = ["Limits", "Observation", "Outcome", "Service", "check_store"]

LAYOUT = "float32-flat/1"


#: Sample paths a forecast with ``quantiles`` and no ``samples`` draws.
PATHS = 100


def _quantile_key(q: float) -> str:
    """A quantile's key in the answer: the shortest text that reads back as the same float."""
    return repr(float(q))


def check_store(store: StateStore, served: ServedModel) -> None:
    """Pin the model's spec fingerprint and columns in the store, or refuse a store that holds
    another spec's states, or records of other columns."""
    # A record's last row, prediction and forecast are laid out by the columns, not by the spec:
    # a model of the same spec with other columns would read them wrongly (or fail on their size).
    columns = json.dumps({"inputs": list(served.inputs), "targets": list(served.targets)})
    want = {"fingerprint": served.spec.fingerprint(), "spec": served.spec.describe(), "layout": LAYOUT}
    held = store.init_meta({**want, "columns": columns})
    model = f"the model{' in ' + served.source if served.source else ''}"
    if held.get("fingerprint") != want["fingerprint"] or held.get("layout", LAYOUT) != LAYOUT:
        raise ServeError(
            f"store {store.url} holds states of spec fingerprint {held.get('fingerprint')!r} "
            f"({held.get('spec', '?')}), but {model} has "
            f"{want['fingerprint']!r} ({want['spec']}); serve it with another --store, or delete the old states"
        )
    if held.get("columns", columns) != columns:
        raise ServeError(
            f"store {store.url} holds records of a model with columns {held['columns']}, but {model} has "
            f"{columns}; serve it with another --store, or delete the old states"
        )


class Service:
    """Everything the HTTP layer calls; see the module docstring for the sequence contract."""

    def __init__(
        self,
        served: ServedModel,
        store: StateStore,
        *,
        max_batch: int = 1024,
        max_wait: float = 0.002,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        inline_max: int | None = None,
        cache_size: int = 100_000,
        cas_tries: int = 100,
    ) -> None:
        check_store(store, served)
        if cache_size < 0:
            raise ConfigError(f"cache_size must be 0 (off) or more, got {cache_size}")
        if cas_tries < 1:
            raise ConfigError(f"cas_tries must be at least 1, got {cas_tries}")
        self.cas_tries = cas_tries
        self._durability = store.durability()
        # The records this process last wrote or read, by stream (see _records); at most cache_size.
        self.cache_size = cache_size
        self._cache: dict[str, Record] = {}
        self.served = served
        self.store = store
        self.limits = limits or Limits()
        self.metrics = metrics or Metrics()
        # One worker thread runs every batch and every single-stream write, in order. OpenMP's thread
        # count is per thread: a new thread must be told, or torch there runs ~40x slower on small ops.
        threads = torch.get_num_threads()
        self.worker = ThreadPoolExecutor(
            1, thread_name_prefix="hiddenstate-worker", initializer=torch.set_num_threads, initargs=(threads,)
        )
        self.batcher: MicroBatcher[Observation] = MicroBatcher(
            self._process,
            lambda o: o.stream_id,
            max_batch=max_batch,
            max_wait=max_wait,
            executor=self.worker,
            on_batch=self.metrics.batch,
            # Small batches on the event loop (no thread hand-off) only for a store in local files: a
            # network store that is down would stall the loop on reconnects instead of one batch.
            inline_max=(64 if store.local else 0) if inline_max is None else inline_max,
            max_retries=cas_tries - 1,
            give_up=lambda o: Outcome.refusal(self._busy(o.stream_id)),
        )
        self._threads = threads
        # The store's calls off the worker (reads, health, housekeeping) run here, not in asyncio's
        # default executor: stop() waits for them, so the store is never closed under a running call
        # (SQLite closed under a running statement crashes the process).
        self.store_calls = ThreadPoolExecutor(thread_name_prefix="hiddenstate-store")
        self._sweeper: asyncio.Task[None] | None = None
        self._count: tuple[float, int] | None = None  # (loop time, streams) of the last count

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        torch.set_num_threads(self._threads)  # small batches run on the event loop's thread (inline_max)
        self.batcher.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._maintenance())

    async def stop(self) -> None:
        await self.batcher.stop()
        loop = asyncio.get_running_loop()
        if self._sweeper is not None:
            self._sweeper.cancel()  # a store call it has in flight keeps running in its thread
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await loop.run_in_executor(None, self.store_calls.shutdown)  # waits for every store call in flight
        await loop.run_in_executor(self.worker, self.store.close)
        self.worker.shutdown(wait=True)

    async def _maintenance(self) -> None:
        """In the background: the store's housekeeping off the request path; sweep expired streams."""
        loop = asyncio.get_running_loop()
        sweep_every = min(60.0, max(float(self.store.ttl or 0) / 2, 0.5))
        last_sweep = loop.time()
        while True:
            await asyncio.sleep(0.5)
            try:
                await loop.run_in_executor(self.store_calls, self.store.maintain)
                if self.store.ttl and loop.time() - last_sweep >= sweep_every:
                    last_sweep = loop.time()
                    await self._in_worker(self.store.sweep)
            except Exception:  # housekeeping must not die; the requests themselves report store errors
                continue

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    # -- validation -------------------------------------------------------------------------------

    def observations(
        self, items: Sequence[tuple[str, int, Sequence[Sequence[float]], int | None]]
    ) -> list[Observation]:
        """Check and normalise ``(stream_id, seq, values, horizon)`` items (see :func:`.intake.validate`)."""
        return validate(self.served, self.limits, items)

    # -- observe ----------------------------------------------------------------------------------

    async def observe(self, observations: Sequence[Observation]) -> list[Outcome]:
        """Advance each stream (micro-batched with every other request in flight)."""
        return await self.batcher.submit(list(observations))

    def _process(self, batch: list[Observation]) -> list[Any]:
        """One micro-batch, in the worker thread, through the stages of :mod:`.stages`; one transaction."""
        served = self.served
        counts: Counter[str] = Counter()  # outcomes, counted into the metrics once per batch
        records, cached = self._records(batch)
        results, moving = stages.judge(batch, records, served, counts)
        steps = 0
        if moving.go:
            done = stages.advance(served, stages.decode(served, moving.have), moving)
            forecasts = stages.forecast(served, moving, done)
            writes, answers = stages.encode(served, moving, done, forecasts, results, counts)
            steps = self._commit(writes, answers, results, counts)
            if counts["nonfinite"] and cached:
                self._recheck(batch, results, cached, counts)
        self.metrics.outcomes(counts, steps=steps)
        return results

    def _recheck(self, batch: list[Observation], results: list[Any], cached: set[str], counts: Counter[str]) -> None:
        """A non-finite verdict made from a cached record, which may be stale (no compare-and-set
        confirms it, as it does an advance): read the stream from the store and judge it again."""
        for k, o in enumerate(batch):
            if o.stream_id in cached and results[k] is not RETRY and results[k].error == NonFiniteError.code:
                results[k] = RETRY
                self._cache.pop(o.stream_id, None)
                counts["nonfinite"] -= 1

    def _commit(
        self,
        writes: list[Write],
        answers: list[tuple[int, int, dict[str, Any]]],
        results: list[Any],
        counts: Counter[str],
    ) -> int:
        """Write the batch by compare-and-set, answer what held, retry what lost; the rows advanced."""
        steps = 0
        written: dict[str, Record] = {}
        for w, (k, n, answer), held in zip(writes, answers, self.store.write(writes), strict=True):
            if held:
                results[k] = Outcome(200, answer)
                steps += n
                written[w.stream_id] = w.record  # type: ignore[assignment]
            else:  # another replica advanced it first: read and judge it again in the next batch
                results[k] = RETRY
                self._cache.pop(w.stream_id, None)
                counts["cas_retry"] += 1
        counts["advanced"] += len(written)
        self._remember(written)
        return steps

    def _records(self, batch: list[Observation]) -> tuple[dict[str, Record], set[str]]:
        """Each stream's record, from this process's cache where the observation would advance it,
        else from the store; and the ids taken from the cache.

        The cache holds the record this process last wrote or read for a stream. It may be stale
        (another replica, a PUT or a DELETE elsewhere), which is safe only for an advance: its write
        is a compare-and-set on the cached version and fails against anything newer, and the stream
        is then read from the store and judged again. Every other verdict (replay, gap, and a
        non-finite advance: see _recheck) is made from the store.
        """
        cache = self._cache
        found: dict[str, Record] = {}
        missing: list[str] = []
        cutoff = None if self.store.ttl is None else time.time() - self.store.ttl
        for o in batch:
            r = cache.get(o.stream_id)
            if r is not None and o.seq == r.seq + 1 and (cutoff is None or r.updated >= cutoff):
                found[o.stream_id] = r
            else:
                missing.append(o.stream_id)
        cached = set(found)
        if missing:
            read = self.store.read(missing)
            found.update(read)
            self._remember(read)
        return found, cached

    def _remember(self, records: Mapping[str, Record]) -> None:
        """Put records into the cache (most recent last); drop the least recently written beyond its size."""
        if not self.cache_size:
            return
        cache = self._cache
        for stream_id, r in records.items():
            cache.pop(stream_id, None)
            cache[stream_id] = r
        over = len(cache) - self.cache_size
        if over > 0:
            for stream_id in list(islice(cache, over)):
                del cache[stream_id]

    # -- reads, forecasts and direct writes -------------------------------------------------------

    def _record(self, stream_id: str) -> Record:
        r = self.store.read([stream_id]).get(stream_id)
        if r is None:
            raise StreamNotFoundError(stream_id)
        return r

    async def forecast(
        self, stream_id: str, horizon: int, quantiles: Any = None, samples: int | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        if horizon > self.limits.max_horizon:
            raise ConfigError(f"horizon {horizon} is above the limit of {self.limits.max_horizon}")
        method = self.served.forecast_method(horizon)
        if quantiles is not None or samples is not None:  # sample paths from the stored state
            if self.served.likelihood is None:
                raise ConfigError("quantiles and samples need a model with a likelihood head")
            if quantiles is not None:  # checked before any path is drawn
                keys = [_quantile_key(q) for q in quantiles]
                if len(set(keys)) < len(keys):
                    raise ConfigError(f"quantiles: each must differ from the others, got {list(quantiles)}")
            paths = (samples if samples is not None else PATHS) * horizon * self.served.n_targets
            if paths > self.limits.max_forecast_values:
                raise ConfigError(
                    f"{paths} sample path values (paths x horizon x {self.served.n_targets} targets); "
                    f"at most {self.limits.max_forecast_values}"
                )
            return await self._in_worker(self._sample, stream_id, horizon, quantiles, samples, seed)
        if seed is not None and self.served.likelihood is None:
            raise ConfigError("seed: a model without a likelihood head draws no sample paths")
        return await self._in_worker(self._forecast, stream_id, horizon, method)

    def _sample(self, stream_id: str, horizon: int, quantiles: Any, samples: int | None, seed: int | None) -> dict:
        from hiddenstate.paths import path_quantiles

        served, r = self.served, self._record(stream_id)
        if r.tail is None:
            raise ServeError(f"stream {stream_id!r}: its state was set by a PUT and nothing has been observed since")
        width = served.n_inputs + served.n_targets
        tails = torch.from_numpy(np.frombuffer(r.tail, dtype="<f4").reshape(1, width).copy())
        n = samples if samples is not None else PATHS
        paths = served.targets_original(
            served.sample(served.from_bytes([r.state]), tails, horizon, n, seed).numpy()[:, 0]
        )
        if not np.isfinite(paths).all():
            raise StateError(f"stream {stream_id!r}: the model's sample paths are not finite (NaN or inf)")
        answer = {"id": stream_id, "seq": r.seq, "method": "paths", "forecast": paths.mean(axis=0).tolist()}
        if quantiles is not None:
            answer["quantiles"] = {
                _quantile_key(q): v.tolist() for q, v in zip(quantiles, path_quantiles(paths, quantiles), strict=True)
            }
        if samples is not None:
            answer["samples"] = paths.tolist()  # (samples, horizon, n_targets), original units
        return answer

    def _forecast(self, stream_id: str, horizon: int, method: str) -> dict[str, Any]:
        served = self.served
        r = self._record(stream_id)
        if method == "rollout" and r.tail is None:
            raise ServeError(
                f"stream {stream_id!r}: its state was set by a PUT and nothing has been observed since, so there is "
                "no last row to roll out from; observe once first"
            )
        states = served.from_bytes([r.state])
        width = served.n_inputs + served.n_targets
        tails = torch.from_numpy(np.frombuffer(r.tail or bytes(4 * width), dtype="<f4").reshape(1, width).copy())
        f = served.forecast(states, tails, horizon).numpy()[0]  # (horizon, n_out)
        if not np.isfinite(f).all():
            raise StateError(f"stream {stream_id!r}: the model's forecast is not finite (NaN or inf)")
        return {"id": stream_id, "seq": r.seq, "method": method, "forecast": served.targets_original(f).tolist()}

    async def get_state(self, stream_id: str) -> dict[str, Any]:
        r = await asyncio.get_running_loop().run_in_executor(self.store_calls, self._record, stream_id)
        return {"id": stream_id, "seq": r.seq, "version": r.version, "state": self.served.state_lists(r.state)}

    async def put_state(
        self, stream_id: str, tensors: Mapping[str, Any], seq: int | None, version: int | None
    ) -> dict[str, Any]:
        """Replace a stream's state, validated exactly like ``State.from_dict`` (one row)."""
        try:
            state = State.from_dict(self.served.spec, dict(tensors), broadcast=True, batch_size=1)
        except (TypeError, ValueError, RuntimeError) as e:
            if isinstance(e, StateError):
                raise
            raise StateError(f"state: {e}") from None
        flat = self.served.to_flat(state.to(dtype=torch.float32))
        if not torch.isfinite(flat).all():
            raise StateError("state: a value is out of float32 range (inf once stored as float32)")
        blob = self.served.to_bytes(flat.numpy()[0])
        return await self._in_worker(self._put, stream_id, blob, seq, version)

    def _busy(self, stream_id: str) -> StoreBusyError:
        return StoreBusyError(
            self.store.url,
            f"stream {stream_id!r}: the compare-and-set lost to other writers {self.cas_tries} times in a row; "
            "try again",
        )

    def _put(self, stream_id: str, blob: bytes, seq: int | None, version: int | None) -> dict[str, Any]:
        for _ in range(self.cas_tries):
            r = self.store.read([stream_id]).get(stream_id)
            current = r.version if r is not None else 0
            if version is not None and version != current:
                raise VersionConflictError(
                    f"stream {stream_id!r}: version {version} was asked for, but the stored version is {current}"
                )
            new_seq = seq if seq is not None else (r.seq if r is not None else 0)
            record = Record(new_seq, new_version(), blob, None, None, None, time.time())
            if self.store.write([Write(stream_id, current, record)])[0]:
                self._cache.pop(stream_id, None)
                return {"id": stream_id, "seq": new_seq, "version": record.version}
            self.metrics.outcome("cas_retry")
        raise self._busy(stream_id)

    async def delete(self, stream_id: str) -> None:
        await self._in_worker(self._delete, stream_id)

    def _delete(self, stream_id: str) -> None:
        for _ in range(self.cas_tries):
            r = self._record(stream_id)
            if self.store.write([Write(stream_id, r.version, None)])[0]:
                self._cache.pop(stream_id, None)
                return
            self.metrics.outcome("cas_retry")
        raise self._busy(stream_id)

    async def count(self) -> int:
        """Streams in the store, counted at most every 10 s (a Redis count scans every key)."""
        loop = asyncio.get_running_loop()
        if self._count is None or loop.time() - self._count[0] > 10.0:
            self._count = (loop.time(), int(await loop.run_in_executor(self.store_calls, self.store.count)))
        return self._count[1]

    def durability_report(self) -> dict[str, Any]:
        """The store's durability as JSON (``mode``, ``durable`` and its settings); the last known
        one while the store cannot be reached."""
        try:
            self._durability = self.store.durability()
        except StoreUnavailableError:
            pass
        return self._durability.to_json()

    async def ping(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.store_calls, self.store.ping)

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
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import torch

from hiddenstate.errors import (
    ConfigError,
    SequenceGapError,
    ServeError,
    ShapeError,
    StateError,
    StreamNotFoundError,
    VersionConflictError,
)
from hiddenstate.serve.batcher import RETRY, MicroBatcher
from hiddenstate.serve.metrics import Metrics
from hiddenstate.serve.served import ServedModel
from hiddenstate.serve.stores import Record, StateStore, Write, new_version
from hiddenstate.serve.stores.sqlite import SQLiteStore
from hiddenstate.state import State

__all__ = ["Limits", "Observation", "Outcome", "Service", "check_store"]

LAYOUT = "float32-flat/1"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these it gets a 4xx, never a 5xx."""

    max_steps: int = 4096  # rows for one stream in one request
    max_streams: int = 10_000  # streams in one bulk request
    max_total_steps: int = 200_000  # rows in one bulk request, all streams together
    max_horizon: int = 4096
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Limits.{name} must be a positive int, got {value!r}")

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class Observation(NamedTuple):
    """One stream's part of an observe request, validated and normalised."""

    stream_id: str
    seq: int
    x: np.ndarray  # (steps, n_in) float32, normalised
    horizon: int | None
    digest: bytes


class Outcome(NamedTuple):
    """The result of one observation: ``status`` 200 with the ``answer`` (JSON-ready), or an error."""

    status: int
    answer: dict[str, Any] | None = None
    detail: str = ""
    expected_seq: int | None = None
    replayed: bool = False
    error: str = ""  # a stable code beside the detail: sequence_gap, replay_conflict, invalid, nonfinite


def check_store(store: StateStore, served: ServedModel) -> None:
    """Pin the model's spec fingerprint in the store, or refuse a store that holds another spec's states."""
    want = {"fingerprint": served.spec.fingerprint(), "spec": served.spec.describe(), "layout": LAYOUT}
    held = store.init_meta(want)
    if held.get("fingerprint") != want["fingerprint"] or held.get("layout", LAYOUT) != LAYOUT:
        raise ServeError(
            f"store {store.url} holds states of spec fingerprint {held.get('fingerprint')!r} "
            f"({held.get('spec', '?')}), but the model{' in ' + served.source if served.source else ''} has "
            f"{want['fingerprint']!r} ({want['spec']}); serve it with another --store, or delete the old states"
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
    ) -> None:
        check_store(store, served)
        if cache_size < 0:
            raise ConfigError(f"cache_size must be 0 (off) or more, got {cache_size}")
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
            # Small batches on the event loop (no thread hand-off) only for a local SQLite file: a
            # network store that is down would stall the loop on reconnects instead of one batch.
            inline_max=(64 if isinstance(store, SQLiteStore) else 0) if inline_max is None else inline_max,
        )
        self._threads = threads
        self._sweeper: asyncio.Task[None] | None = None
        self._count: tuple[float, int] | None = None  # (loop time, streams) of the last count

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        torch.set_num_threads(self._threads)  # small batches run on the event loop's thread (inline_max)
        self.batcher.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._maintenance())

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.get_running_loop().run_in_executor(self.worker, self.store.close)
        self.worker.shutdown(wait=True)

    async def _maintenance(self) -> None:
        """In the background: checkpoint SQLite's WAL off the request path; sweep expired streams."""
        loop = asyncio.get_running_loop()
        checkpoint = getattr(self.store, "checkpoint", None)
        sweep_every = min(60.0, max(float(self.store.ttl or 0) / 2, 0.5))
        last_sweep = loop.time()
        while True:
            await asyncio.sleep(0.5)
            try:
                if checkpoint is not None:
                    await loop.run_in_executor(None, checkpoint)
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
        """Check and normalise ``(stream_id, seq, values, horizon)`` items, all rows at once.

        Raises ShapeError or ConfigError naming the stream, the row and what is wrong; nothing
        is queued unless every item is acceptable.
        """
        served, lim = self.served, self.limits
        if len(items) > lim.max_streams:
            raise ShapeError(f"{len(items)} streams in one request; at most {lim.max_streams}")
        lengths = [len(values) for _, _, values, _ in items]
        for (sid, _, _, _), steps in zip(items, lengths, strict=True):
            if steps > lim.max_steps:
                raise ShapeError(f"stream {sid!r}: {steps} rows in one request; at most {lim.max_steps}")
        if sum(lengths) > lim.max_total_steps:
            raise ShapeError(f"{sum(lengths)} rows in one request; at most {lim.max_total_steps}")
        if len(items) > 1 and len({item[0] for item in items}) < len(items):
            seen: set[str] = set()
            for sid, _, _, _ in items:
                if sid in seen:
                    raise ShapeError(f"stream {sid!r} appears twice in one request; send its rows in one item")
                seen.add(sid)
        rows = items[0][2] if len(items) == 1 else [row for _, _, values, _ in items for row in values]
        try:
            raw = np.array(rows, dtype=np.float64)  # (all rows, n_in)
            ok = raw.ndim == 2 and raw.shape[1] == served.n_inputs
        except ValueError:  # ragged rows
            ok = False
        if not ok:
            for sid, _, values, _ in items:
                for r, row in enumerate(values):
                    if len(row) != served.n_inputs:
                        raise ShapeError(
                            f"stream {sid!r}: values row {r} has {len(row)} numbers; the model takes "
                            f"{served.n_inputs} ({', '.join(served.inputs)})"
                        )
        x = served.normalise(raw)  # (all rows, n_in) float32
        offsets = [0]
        for steps in lengths:
            offsets.append(offsets[-1] + steps)
        if not np.isfinite(x).all():
            r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
            k = int(np.searchsorted(offsets, r, side="right")) - 1
            raise ShapeError(
                f"stream {items[k][0]!r}: values row {r - offsets[k]} column {served.inputs[c]!r} "
                f"({float(raw[r, c])!r}) is out of float32 range once normalised"
            )
        for horizon in {h for _, _, _, h in items} - {None}:
            if horizon > lim.max_horizon:  # type: ignore[operator]
                raise ConfigError(f"horizon {horizon} is above the limit of {lim.max_horizon}")
            served.forecast_method(horizon)  # type: ignore[arg-type]  # ConfigError when it cannot be done
        # Each stream's digest hashes its rows (float64, as sent) and its horizon: a repeated seq
        # replays only for the same body. One bytes object for all rows, sliced per stream.
        # (tuple.__new__ builds each NamedTuple at a third of the cost of calling the class.)
        blob, width, blake2b, make = raw.tobytes(), raw.shape[1] * 8, hashlib.blake2b, tuple.__new__
        return [
            make(
                Observation,
                (
                    sid,
                    seq,
                    x[a:b],
                    horizon,
                    blake2b(blob[a * width : b * width] + b"%r" % horizon, digest_size=16).digest(),
                ),
            )
            for (sid, seq, _, horizon), a, b in zip(items, offsets, offsets[1:], strict=False)
        ]

    # -- observe ----------------------------------------------------------------------------------

    async def observe(self, observations: Sequence[Observation]) -> list[Outcome]:
        """Advance each stream (micro-batched with every other request in flight)."""
        return await self.batcher.submit(list(observations))

    def _process(self, batch: list[Observation]) -> list[Any]:
        """One micro-batch, in the worker thread: read, judge seqs, advance, write (one transaction)."""
        served = self.served
        counts: Counter[str] = Counter()  # outcomes, counted into the metrics once per batch
        records = self._records(batch)
        results: list[Any] = [None] * len(batch)
        go: list[Observation] = []  # the observations that advance
        have: list[Record | None] = []  # their records (None: a new stream)
        slots: list[int] = []  # their places in the batch
        for k, o in enumerate(batch):
            r = records.get(o.stream_id)
            last = r.seq if r is not None else 0
            if o.seq == last + 1 and (r is not None or not served.cond_size or o.x.shape[0] >= 2):
                go.append(o)
                have.append(r)
                slots.append(k)
            elif r is not None and o.seq == last:
                results[k] = self._replay(o, r, counts)
            elif o.seq != last + 1:
                results[k] = Outcome(
                    409,
                    detail=str(SequenceGapError(o.stream_id, last + 1, o.seq)),
                    expected_seq=last + 1,
                    error="sequence_gap",
                )
                counts["gap"] += 1
            else:
                results[k] = Outcome(
                    422,
                    detail=f"stream {o.stream_id!r}: this model starts a stream from its first row "
                    "(state_encoder 'cond'), so the first observe needs at least 2 rows",
                    error="invalid",
                )
                counts["rejected"] += 1
        if not go:
            self.metrics.outcomes(counts)
            return results
        n = len(go)
        stored = [i for i, r in enumerate(have) if r is not None]
        if len(stored) == n:
            starts = served.from_bytes([r.state for r in have])  # type: ignore[union-attr]
        else:
            starts = torch.zeros(n, served.state_width)
            if stored:
                starts[torch.tensor(stored)] = served.from_bytes([have[i].state for i in stored])  # type: ignore[union-attr]
        fresh = np.fromiter((r is None for r in have), dtype=bool, count=n)
        new, preds = served.advance(starts, fresh, [o.x for o in go])  # (n, state_width), (n, n_out)
        tails = torch.cat([torch.from_numpy(np.stack([o.x[-1] for o in go])), preds], dim=1)  # (n, n_in + n_out)
        predictions = served.targets_original(preds.numpy())  # (n, n_out) float64, original units
        ok = torch.isfinite(new).all(1).numpy() & np.isfinite(predictions).all(1)
        forecasts: dict[int, tuple[np.ndarray, list[list[float]]]] = {}  # normalised float32, original units
        for horizon in {o.horizon for o in go} - {None}:
            rows = [i for i, o in enumerate(go) if o.horizon == horizon]
            f = served.forecast(new[torch.tensor(rows)], tails[torch.tensor(rows)], horizon).numpy()  # type: ignore[arg-type]
            original = served.targets_original(f)  # (len(rows), horizon, n_out)
            good = np.isfinite(f).all((1, 2)) & np.isfinite(original).all((1, 2))
            for i, fi, oi, g in zip(rows, f, original, good.tolist(), strict=True):
                if g:
                    forecasts[i] = (fi, oi.tolist())
                else:
                    ok[i] = False
        state_bytes = new.numpy().astype("<f4", copy=False).tobytes()
        tail_bytes = tails.numpy().astype("<f4", copy=False).tobytes()
        sw, tw = served.state_width * 4, tails.shape[1] * 4
        now = time.time()
        writes: list[Write] = []
        answers: list[tuple[int, int, dict[str, Any]]] = []  # (slot, steps, answer)
        make, version = tuple.__new__, new_version  # locals, and NamedTuples built without their __new__: per stream
        for i, o, r, good, prediction in zip(range(n), go, have, ok.tolist(), predictions.tolist(), strict=True):
            if not good:
                results[slots[i]] = Outcome(
                    422,
                    detail=f"stream {o.stream_id!r}: the model produced NaN or inf at seq {o.seq}; "
                    "the state was not advanced (check the values for outliers)",
                    error="nonfinite",
                )
                counts["nonfinite"] += 1
                continue
            answer: dict[str, Any] = {"id": o.stream_id, "seq": o.seq, "prediction": prediction}
            fbytes = None
            if o.horizon is not None:
                fc, answer["forecast"] = forecasts[i]
                fbytes = fc.astype("<f4").tobytes()
            state, tail = state_bytes[i * sw : (i + 1) * sw], tail_bytes[i * tw : (i + 1) * tw]
            record = make(Record, (o.seq, version(), state, tail, fbytes, o.digest, now))
            writes.append(make(Write, (o.stream_id, 0 if r is None else r.version, record)))
            answers.append((slots[i], len(o.x), answer))
        steps_done = 0
        written: dict[str, Record] = {}
        for w, (k, steps, answer), held in zip(writes, answers, self.store.write(writes), strict=True):
            if held:
                results[k] = Outcome(200, answer)
                steps_done += steps
                written[w.stream_id] = w.record  # type: ignore[assignment]
            else:  # another replica advanced it first: read and judge it again in the next batch
                results[k] = RETRY
                self._cache.pop(w.stream_id, None)
                counts["cas_retry"] += 1
        counts["advanced"] += len(written)
        self._remember(written)
        self.metrics.outcomes(counts, steps=steps_done)
        return results

    def _records(self, batch: list[Observation]) -> dict[str, Record]:
        """Each stream's record, from this process's cache where the observation would advance it,
        else from the store.

        The cache holds the record this process last wrote or read for a stream. It may be stale
        (another replica, a PUT or a DELETE elsewhere), which is safe only for an advance: its write
        is a compare-and-set on the cached version and fails against anything newer, and the stream
        is then read from the store and judged again. Every other verdict (replay, gap) is made
        from the store.
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
        if missing:
            read = self.store.read(missing)
            found.update(read)
            self._remember(read)
        return found

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

    def _replay(self, o: Observation, r: Record, counts: Counter[str]) -> Outcome:
        if r.digest is None or r.tail is None:
            counts["conflict"] += 1
            return Outcome(
                409,
                detail=f"stream {o.stream_id!r}: seq {o.seq} was set by a PUT of the state, not by an observe; "
                f"there is no answer to repeat; the next seq is {o.seq + 1}",
                expected_seq=o.seq + 1,
                error="replay_conflict",
            )
        if r.digest != o.digest:
            counts["conflict"] += 1
            return Outcome(
                409,
                detail=f"stream {o.stream_id!r}: seq {o.seq} was already applied with other values or horizon; "
                f"the next seq is {o.seq + 1}",
                expected_seq=o.seq + 1,
                error="replay_conflict",
            )
        counts["replayed"] += 1
        return Outcome(200, self._stored_answer(o.stream_id, r), replayed=True)

    def _stored_answer(self, stream_id: str, r: Record) -> dict[str, Any]:
        """The answer of the observe that wrote ``r``, rebuilt from the stored float32 prediction and
        forecast by the same arithmetic as then, so it is the same, bit for bit."""
        served = self.served
        prediction = np.frombuffer(r.tail, dtype="<f4")[served.n_inputs :]  # type: ignore[arg-type]
        answer: dict[str, Any] = {
            "id": stream_id,
            "seq": r.seq,
            "prediction": served.targets_original(prediction).tolist(),
        }
        if r.forecast is not None:
            f = np.frombuffer(r.forecast, dtype="<f4").reshape(-1, served.n_targets)  # (horizon, n_out)
            answer["forecast"] = served.targets_original(f).tolist()
        return answer

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
            return await self._in_worker(self._sample, stream_id, horizon, quantiles, samples, seed)
        return await self._in_worker(self._forecast, stream_id, horizon, method)

    def _sample(self, stream_id: str, horizon: int, quantiles: Any, samples: int | None, seed: int | None) -> dict:
        from hiddenstate.paths import path_quantiles

        served, r = self.served, self._record(stream_id)
        if r.tail is None:
            raise ServeError(f"stream {stream_id!r}: its state was set by a PUT and nothing has been observed since")
        width = served.n_inputs + served.n_targets
        tails = torch.from_numpy(np.frombuffer(r.tail, dtype="<f4").reshape(1, width).copy())
        n = samples if samples is not None else 100
        paths = served.targets_original(
            served.sample(served.from_bytes([r.state]), tails, horizon, n, seed).numpy()[:, 0]
        )
        if not np.isfinite(paths).all():
            raise StateError(f"stream {stream_id!r}: the model's sample paths are not finite (NaN or inf)")
        answer = {"id": stream_id, "seq": r.seq, "method": "paths", "forecast": paths.mean(axis=0).tolist()}
        if quantiles is not None:
            answer["quantiles"] = {
                f"{q:g}": v.tolist() for q, v in zip(quantiles, path_quantiles(paths, quantiles), strict=True)
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
        r = await asyncio.get_running_loop().run_in_executor(None, self._record, stream_id)
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

    def _put(self, stream_id: str, blob: bytes, seq: int | None, version: int | None) -> dict[str, Any]:
        while True:
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

    async def delete(self, stream_id: str) -> None:
        await self._in_worker(self._delete, stream_id)

    def _delete(self, stream_id: str) -> None:
        while True:
            r = self._record(stream_id)
            if self.store.write([Write(stream_id, r.version, None)])[0]:
                self._cache.pop(stream_id, None)
                return
            self.metrics.outcome("cas_retry")

    async def count(self) -> int:
        """Streams in the store, counted at most every 10 s (a Redis count scans every key)."""
        loop = asyncio.get_running_loop()
        if self._count is None or loop.time() - self._count[0] > 10.0:
            self._count = (loop.time(), int(await loop.run_in_executor(None, self.store.count)))
        return self._count[1]

    async def ping(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.store.ping)

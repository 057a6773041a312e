"""The service's per-process record cache: a stale cache never changes a verdict or an answer.

Two services (two replicas) share one store. Each caches the records it last wrote or read; the
other one changes the streams behind its back (observes, PUTs, DELETEs). Every answer must still
be what the library gives from the store's true state.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.runs.run import load_run
from hiddenstate.serve import ServedModel, Service, open_store
from hiddenstate.serve.testing import NanWhenHigh, demo_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_run(tmp_path_factory.mktemp("serve-cache") / "run")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'states.db'}"
    return str(request.getfixturevalue("redis_server").url(0, prefix=f"{uuid.uuid4().hex[:8]}:"))


def library(run: Any, observes: list[list[list[float]]], state: hs.State | None = None) -> tuple[list[float], Any]:
    """The library's last prediction (original units) and state after these observes of one stream."""
    y = None
    for values in observes:
        x = torch.from_numpy(run.scaler.transform(np.asarray(values, np.float64)).astype(np.float32))[None]
        with torch.no_grad():
            y, state = run.model(x, state)
    assert y is not None
    return run.scaler.inverse_transform(y[0, -1].double().numpy()).tolist(), state


def test_a_stale_cache_never_changes_a_verdict_or_an_answer(run_dir: Path, store_url: str) -> None:
    run = load_run(run_dir)
    served = ServedModel.from_run(run, backend="torch")  # bit for bit against the library's default backend
    rng = np.random.default_rng(0)

    def values(steps: int = 1) -> list[list[float]]:
        return (50 + 10 * rng.standard_normal((steps, 2))).round(4).tolist()

    async def scenario() -> None:
        a = Service(served, open_store(store_url), max_wait=0.0)
        b = Service(served, open_store(store_url), max_wait=0.0)
        await a.start()
        await b.start()

        async def obs(svc: Service, seq: int, rows: list[list[float]]) -> Any:
            (outcome,) = await svc.observe(svc.observations([("s", seq, rows, None)]))
            return outcome

        try:
            sent = [values(2), values()]
            assert (await obs(a, 1, sent[0])).status == 200
            assert (await obs(a, 2, sent[1])).status == 200  # a caches seq 2
            sent.append(values())
            by_b = await obs(b, 3, sent[2])  # b advances behind a's back
            assert by_b.status == 200 and by_b.answer["prediction"] == library(run, sent)[0]

            # a's cache says seq 2, so seq 3 looks like an advance; the compare-and-set refuses it,
            # a reads the store and replays b's answer instead of advancing twice.
            retries = a.metrics._outcomes["cas_retry"]
            again = await obs(a, 3, sent[2])
            assert (again.status, again.replayed, again.answer) == (200, True, by_b.answer)
            assert a.metrics._outcomes["cas_retry"] == retries + 1
            other = await obs(a, 3, values())
            assert (other.status, other.error, other.expected_seq) == (409, "replay_conflict", 4)
            gap = await obs(a, 5, values())
            assert (gap.status, gap.expected_seq) == (409, 4)
            sent.append(values())
            assert (await obs(a, 4, sent[3])).answer["prediction"] == library(run, sent)[0]  # a caches seq 4

            # b replaces the state, keeping the seq: a's cached state is stale but its seq fits.
            put = {name: (0.3 * rng.standard_normal((1, width))).tolist() for name, width in served.layout}
            await b.put_state("s", put, None, None)
            expected = hs.State.from_dict(run.spec, {k: torch.tensor(v, dtype=torch.float32) for k, v in put.items()})
            after = values(3)
            got = await obs(a, 5, after)
            assert got.status == 200 and got.answer["prediction"] == library(run, [after], expected)[0]
            stored = await b.get_state("s")
            want = library(run, [after], expected)[1].to_dict()
            for name, tensor in want.items():
                assert np.array_equal(np.asarray(stored["state"][name], np.float32), tensor.numpy()), name

            # b deletes the stream: a's next advance finds nothing and says where to start again.
            await b.delete("s")
            gone = await obs(a, 6, values())
            assert (gone.status, gone.error, gone.expected_seq) == (409, "sequence_gap", 1)
            assert (await obs(a, 1, values())).status == 200
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_a_stale_cache_never_makes_a_nonfinite_verdict(store_url: str) -> None:
    """The model turns these rows into NaN, but the stream behind a's cache is gone or elsewhere:
    the verdict is the store's (a gap), as the other replica says, not a's stale 'nonfinite'."""
    scaler = StandardScaler.fit(np.random.default_rng(0).normal(50, 10, (100, 2)), columns=["load", "temp"])
    served = ServedModel.build(NanWhenHigh(2, 2, [hs.LSTM(4)]), scaler, ["load", "temp"], ["load", "temp"])
    zeros = {name: [[0.0] * width] for name, width in served.layout}
    wild = [[500.0, 40.0]]

    async def scenario() -> None:
        a = Service(served, open_store(store_url), max_wait=0.0)
        b = Service(served, open_store(store_url), max_wait=0.0)
        await a.start()
        await b.start()

        async def obs(svc: Service, stream: str, seq: int, rows: list[list[float]]) -> Any:
            (outcome,) = await svc.observe(svc.observations([(stream, seq, rows, None)]))
            return (outcome.status, outcome.error, outcome.expected_seq)

        try:
            for stream in ("gone", "moved", "here", "raced"):
                assert (await obs(a, stream, 1, [[50.0, 40.0]]))[0] == 200  # a caches seq 1
            await b.delete("gone")
            await b.put_state("moved", zeros, 7, None)
            assert (await obs(b, "raced", 2, [[50.0, 40.0]]))[0] == 200
            # in one batch with a stream whose compare-and-set loses
            both = await a.observe(a.observations([("gone", 2, wild, None), ("raced", 2, [[50.0, 40.0]], None)]))
            assert [(o.status, o.error, o.replayed) for o in both] == [(409, "sequence_gap", False), (200, "", True)]
            assert await obs(a, "moved", 2, wild) == await obs(b, "moved", 2, wild) == (409, "sequence_gap", 8)
            assert await obs(b, "gone", 2, wild) == (409, "sequence_gap", 1)
            # a cached record that is current: the verdict stands, counted once
            assert await obs(a, "here", 2, wild) == (422, "nonfinite", None)
            assert a.metrics._outcomes["nonfinite"] == 1
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_the_cache_is_bounded_and_can_be_turned_off(run_dir: Path, tmp_path: Path) -> None:
    served = ServedModel.from_run(load_run(run_dir))

    async def scenario(cache_size: int) -> list[Any]:
        svc = Service(served, open_store(f"sqlite://{tmp_path / f'c{cache_size}.db'}"), cache_size=cache_size)
        await svc.start()
        try:
            answers = []
            for seq in (1, 2, 3):
                items = svc.observations([(f"s{k}", seq, [[float(k), float(seq)]], None) for k in range(5)])
                answers.append([o.answer for o in await svc.observe(items)])
                assert len(svc._cache) == min(cache_size, 5)
            return answers
        finally:
            await svc.stop()

    assert asyncio.run(scenario(2)) == asyncio.run(scenario(0)) == asyncio.run(scenario(100))
    with pytest.raises(hs.ConfigError, match="cache_size"):
        Service(served, open_store(f"sqlite://{tmp_path / 'bad.db'}"), cache_size=-1)

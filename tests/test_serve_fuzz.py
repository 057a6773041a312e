"""Fuzzing the HTTP API: schemathesis cases from the OpenAPI schema (valid and invalid) and
hypothesis-made bodies. Never a 5xx, and every refused request leaves the whole store's
checksum unchanged. On SQLite and on a real redis-server."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from hiddenstate.runs.run import load_run
from hiddenstate.serve import Limits, ServedModel, Service, create_app, open_store
from hiddenstate.serve.stores import StateStore
from hiddenstate.serve.testing import ThreadServer, demo_run

LIMITS = Limits(max_steps=32, max_streams=20, max_total_steps=200, max_horizon=16, max_body_bytes=32 * 1024)
KNOWN = [f"known-{i}" for i in range(5)]  # streams that exist, so refusals could damage something
REFUSED = {400, 404, 405, 409, 413, 422}


@dataclass
class Target:
    url: str
    store: StateStore
    http: httpx.Client


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("serve-fuzz")
    run = load_run(demo_run(folder / "run"))
    if request.param == "sqlite":
        url = f"sqlite://{folder / 'states.db'}"
    else:
        url = request.getfixturevalue("redis_server").url(0, prefix=f"{uuid.uuid4().hex[:8]}:")
    service = Service(ServedModel.from_run(run), open_store(url), limits=LIMITS, max_wait=0.0)
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for i, stream in enumerate(KNOWN):
            for seq in range(1, i + 2):
                assert (
                    http.post(f"/v1/streams/{stream}/observe", json={"seq": seq, "values": [[50.0, 40.0]]}).status_code
                    == 200
                )
        yield Target(server.url, service.store, http)


def _check(target: Target, status: int, text: str, before: str) -> None:
    assert status < 500, text
    if status >= 400:
        assert status in REFUSED, text
        assert target.store.checksum() == before, f"a refused request ({status}) changed the store: {text[:300]}"
        detail = json.loads(text).get("detail")
        assert detail, text


def _schemathesis_strategy(target: Target) -> st.SearchStrategy[Any]:
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return st.one_of(*(op.as_strategy(generation_mode=mode) for op in ops for mode in modes))


def _run_schemathesis(target: Target, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=_schemathesis_strategy(target))
    def check(case: Any) -> None:
        before = target.store.checksum()
        response = case.call(base_url=target.url)
        _check(target, response.status_code, response.text, before)

    check()


def test_schemathesis_cases_never_fail_the_server_nor_change_the_store_when_refused(target: Target) -> None:
    _run_schemathesis(target, 150)


@pytest.mark.slow
def test_schemathesis_long(target: Target) -> None:
    _run_schemathesis(target, 3000)


# -- hypothesis-made bodies: near-valid, hostile numbers, arbitrary JSON, raw bytes ------------------

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -1e40, 1e308, 5e-324, 0.0, -0.0, 50.0]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
ROWS = st.lists(st.lists(NUMBERS, min_size=0, max_size=4), min_size=0, max_size=5)
SEQS = st.one_of(st.integers(min_value=-3, max_value=8), st.integers(), st.floats(), st.text(max_size=3), st.none())
JSONS = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:  # now and then no seq at all
        body["seq"] = draw(SEQS)
    if draw(st.integers(0, 9)) > 0:
        body["values"] = draw(ROWS)
    if draw(st.booleans()):
        body["horizon"] = draw(st.one_of(st.integers(-2, 40), st.floats(), st.text(max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=5))] = draw(JSONS)
    return body


def _encode(obj: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity as bare tokens, like Python's json does."""
    return json.dumps(obj, allow_nan=True).encode()


REQUESTS = st.one_of(
    st.tuples(
        st.just("POST"),
        st.sampled_from([f"/v1/streams/{s}/observe" for s in [*KNOWN, "fresh-a"]]),
        near_valid().map(_encode),
    ),
    st.tuples(
        st.just("POST"),
        st.just("/v1/observe"),
        st.lists(near_valid().map(lambda b: {"id": "known-1", **b}), max_size=3).map(lambda s: _encode({"streams": s})),
    ),
    st.tuples(
        st.just("PUT"),
        st.sampled_from(["/v1/streams/known-2/state", "/v1/streams/fresh-b/state"]),
        st.dictionaries(
            st.sampled_from(["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c", "layers.9.h", "x"]),
            st.one_of(ROWS, st.lists(NUMBERS, max_size=20), JSONS),
            max_size=5,
        ).map(lambda d: _encode({"state": d})),
    ),
    st.tuples(st.just("POST"), st.just("/v1/streams/known-3/forecast"), JSONS.map(lambda j: _encode({"horizon": j}))),
    st.tuples(
        st.sampled_from(["POST", "PUT"]),
        st.sampled_from(["/v1/streams/known-0/observe", "/v1/observe", "/v1/streams/known-0/state"]),
        st.one_of(st.binary(max_size=64), JSONS.map(_encode), st.just(b"[" * 3000), st.just(b'{"seq":1,' * 5000)),
    ),
)


def _run_bodies(target: Target, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request=REQUESTS)
    def check(request: tuple[str, str, bytes]) -> None:
        method, path, body = request
        before = target.store.checksum()
        r = target.http.request(method, path, content=body, headers={"content-type": "application/json"})
        _check(target, r.status_code, r.text, before)
        if r.status_code == 200 and path.endswith("/observe") and path.startswith("/v1/streams/"):
            answer = r.json()
            assert all(math.isfinite(v) for v in answer["prediction"])

    check()


def test_hypothesis_bodies_get_4xx_and_leave_the_store_unchanged(target: Target) -> None:
    _run_bodies(target, 300)


@pytest.mark.slow
def test_hypothesis_bodies_long(target: Target) -> None:
    _run_bodies(target, 5000)

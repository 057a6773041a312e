"""The HTTP service on a real uvicorn server, on SQLite and on a real redis-server: the sequence
contract, forecasts, state GET/PUT/DELETE, bad input (4xx, store unchanged), metrics, docs, TTL."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.data.scaling import StandardScaler
from hiddenstate.errors import ServeError
from hiddenstate.forecast import forecast_original
from hiddenstate.runs.run import Run, load_run, save_run
from hiddenstate.serve import Limits, ServedModel, Service, create_app, open_store
from hiddenstate.serve.stores import StateStore
from hiddenstate.serve.testing import NanWhenHigh, ThreadServer, demo_run

LIMITS = Limits(max_steps=64, max_streams=50, max_total_steps=500, max_horizon=24, max_body_bytes=64 * 1024)
_ids = count()


def sid(prefix: str = "s") -> str:
    """A stream id no other test uses."""
    return f"{prefix}{next(_ids)}-{uuid.uuid4().hex[:6]}"


@dataclass
class Api:
    http: httpx.Client
    service: Service
    store: StateStore
    run: Run
    url: str


def _store_url(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{folder / f'{uuid.uuid4().hex[:8]}.db'}"
    return request.getfixturevalue("redis_server").url(0, prefix=f"{uuid.uuid4().hex[:8]}:")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_run(tmp_path_factory.mktemp("serve-app") / "run")


def _serve(run_dir: Path, url: str, **kw: Any) -> Iterator[Api]:
    run = load_run(run_dir)
    store = open_store(url, ttl=kw.pop("ttl", None))
    # The library's default backend on both sides, so that answers can be compared bit for bit.
    service = Service(ServedModel.from_run(run, backend="torch"), store, limits=LIMITS, max_wait=0.001, **kw)
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield Api(http, service, store, run, server.url)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def api(request: pytest.FixtureRequest, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from _serve(run_dir, _store_url(request.param, request, tmp_path_factory.mktemp("store")))


# -- the library's answer, computed offline ---------------------------------------------------------


def replay(run: Run, observes: list[np.ndarray], state: hs.State | None = None) -> tuple[np.ndarray, hs.State]:
    """Run each observe's rows through the library model, as one stream; the last prediction and state."""
    y = None
    for values in observes:
        x = torch.from_numpy(run.scaler.transform(np.asarray(values, np.float64)).astype(np.float32))[None]
        with torch.no_grad():
            y, state = run.model(x, state)
    assert y is not None and state is not None
    return run.scaler.inverse_transform(y[0, -1].double().numpy()), state  # targets are the inputs here


def rows(rng: np.random.Generator, steps: int) -> list[list[float]]:
    return (50 + 10 * rng.standard_normal((steps, 2))).round(4).tolist()


def observe(api: Api, stream: str, seq: int, values: Any, **extra: Any) -> httpx.Response:
    return api.http.post(f"/v1/streams/{stream}/observe", json={"seq": seq, "values": values, **extra})


def state_of(api: Api, stream: str) -> dict[str, Any]:
    r = api.http.get(f"/v1/streams/{stream}/state")
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_state_equals(got: dict[str, list[list[float]]], want: hs.State) -> None:
    assert set(got) == set(want.to_dict())
    for name, tensor in want.to_dict().items():
        assert np.array_equal(np.asarray(got[name], np.float32), tensor.numpy()), name


# -- the sequence contract --------------------------------------------------------------------------


def test_observes_advance_the_state_exactly_as_the_library_does(api: Api) -> None:
    rng, stream, sent = np.random.default_rng(0), sid(), []
    for seq, steps in enumerate([1, 3, 2, 1], start=1):
        values = rows(rng, steps)
        sent.append(values)
        r = observe(api, stream, seq, values)
        assert r.status_code == 200, r.text
        prediction, state = replay(api.run, sent)
        assert r.json() == {"id": stream, "seq": seq, "prediction": prediction.tolist()}
        got = state_of(api, stream)
        assert got["seq"] == seq
        assert_state_equals(got["state"], state)


def test_a_repeated_seq_returns_the_stored_answer_without_advancing_twice(api: Api) -> None:
    rng, stream = np.random.default_rng(1), sid()
    first, second = rows(rng, 2), rows(rng, 1)
    observe(api, stream, 1, first)
    answer = observe(api, stream, 2, second)
    before = api.store.checksum()
    again = observe(api, stream, 2, second)
    assert again.status_code == 200 and again.content == answer.content
    assert again.headers["x-hiddenstate-replayed"] == "true" and "x-hiddenstate-replayed" not in answer.headers
    assert api.store.checksum() == before
    third = rows(rng, 1)
    r = observe(api, stream, 3, third)
    assert r.json()["prediction"] == replay(api.run, [first, second, third])[0].tolist()  # not [.., second, second, ..]


def test_a_repeated_seq_with_other_values_is_a_conflict(api: Api) -> None:
    rng, stream = np.random.default_rng(2), sid()
    observe(api, stream, 1, rows(rng, 1))
    before = api.store.checksum()
    r = observe(api, stream, 1, rows(rng, 1))
    assert r.status_code == 409
    assert r.json() == {
        "detail": f"stream '{stream}': seq 1 was already applied with other values or horizon; the next seq is 2",
        "error": "replay_conflict",
        "expected_seq": 2,
    }
    assert api.store.checksum() == before


def test_gaps_and_out_of_order_seqs_get_409_with_the_expected_seq(api: Api) -> None:
    rng, stream = np.random.default_rng(3), sid()
    r = observe(api, stream, 2, rows(rng, 1))
    assert (r.status_code, r.json()) == (
        409,
        {"detail": f"stream '{stream}': expected seq 1, got 2", "error": "sequence_gap", "expected_seq": 1},
    )
    observe(api, stream, 1, rows(rng, 1))
    observe(api, stream, 2, rows(rng, 1))
    before = api.store.checksum()
    for late in (1, 4, 10):
        r = observe(api, stream, late, rows(rng, 1))
        assert r.status_code == 409 and r.json()["expected_seq"] == 3
        assert r.json()["detail"] == f"stream '{stream}': expected seq 3, got {late}"
    assert api.store.checksum() == before


def test_horizon_and_forecast_equal_the_library_forecast_of_the_history(api: Api) -> None:
    rng, stream = np.random.default_rng(4), sid()
    history = [rows(rng, 3), rows(rng, 2)]
    observe(api, stream, 1, history[0])
    r = observe(api, stream, 2, history[1], horizon=5)
    want = forecast_original(api.run, np.concatenate(history), 5, "rollout")[0]  # (5, 2)
    np.testing.assert_allclose(r.json()["forecast"], want, rtol=1e-6)
    assert r.json()["forecast"][0] == r.json()["prediction"]
    before = api.store.checksum()
    f = api.http.post(f"/v1/streams/{stream}/forecast", json={"horizon": 5})
    assert f.status_code == 200
    assert f.json() == {"id": stream, "seq": 2, "method": "rollout", "forecast": r.json()["forecast"]}
    assert api.store.checksum() == before  # a forecast does not touch the state


def test_bulk_observe_answers_each_stream_on_its_own(api: Api) -> None:
    rng = np.random.default_rng(5)
    old, new, gap = sid(), sid(), sid()
    first = rows(rng, 2)
    observe(api, old, 1, first)
    items = [
        {"id": old, "seq": 2, "values": (second := rows(rng, 3)), "horizon": 2},
        {"id": new, "seq": 1, "values": (fresh := rows(rng, 1))},
        {"id": gap, "seq": 5, "values": rows(rng, 1)},
    ]
    r = api.http.post("/v1/observe", json={"streams": items})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["id"] for x in results] == [old, new, gap]
    assert results[0]["status"] == 200 and results[0]["prediction"] == replay(api.run, [first, second])[0].tolist()
    assert len(results[0]["forecast"]) == 2
    assert results[1] == {"status": 200, "id": new, "seq": 1, "prediction": replay(api.run, [fresh])[0].tolist()}
    assert results[2] == {
        "id": gap,
        "status": 409,
        "detail": f"stream '{gap}': expected seq 1, got 5",
        "error": "sequence_gap",
        "expected_seq": 1,
    }


# -- bad input: a clear 4xx, never a 5xx, and the store unchanged -------------------------------------

TAKES = r"the model takes 2 \(load, temp\)"
FINITE = r"Input should be a finite number, got"
BAD_OBSERVES = [
    (b'{"seq": 1, "values": [[1, 2]]', 400, r"malformed JSON: EOF while parsing an object at line 1 column 29"),
    (b"hello", 400, r"malformed JSON: expected value at line 1 column 1"),
    (b"", 400, r"malformed JSON: EOF while parsing a value at line 1 column 0"),
    (b"[" * 5000, 400, r"malformed JSON: recursion limit exceeded .*"),
    (b'{"seq": 1, "values": [[1, 2, 3]]}', 422, r"stream '{s}': values row 0 has 3 numbers; " + TAKES),
    (b'{"seq": 1, "values": [[1, 2], [3]]}', 422, r"stream '{s}': values row 1 has 1 numbers; " + TAKES),
    (b'{"seq": 1, "values": [[1, NaN]]}', 422, r"body\.values\[0\]\[1\]: " + FINITE + " nan"),
    (b'{"seq": 1, "values": [[Infinity, 1]]}', 422, r"body\.values\[0\]\[0\]: " + FINITE + " inf"),
    (b'{"seq": 1, "values": [[1, -Infinity]]}', 422, r"body\.values\[0\]\[1\]: " + FINITE + " -inf"),
    (b'{"seq": 1, "values": [[1e999, 1]]}', 422, r"body\.values\[0\]\[0\]: " + FINITE + " inf"),
    (
        b'{"seq": 1, "values": [[1, 1e40]]}',
        422,
        r"stream '{s}': values row 0 column 'temp' \(1e\+40\) is out of float32 range once normalised",
    ),
    (b'{"seq": 1, "values": [[true, 1]]}', 422, r"body\.values\[0\]\[0\]: Input should be a valid number, got True"),
    (b'{"seq": 1, "values": []}', 422, r"body\.values: List should have at least 1 item after validation, not 0"),
    (b'{"seq": 0, "values": [[1, 2]]}', 422, r"body\.seq: Input should be greater than or equal to 1"),
    (b'{"seq": "1", "values": [[1, 2]]}', 422, r"body\.seq: Input should be a valid integer, got '1'"),
    (b'{"seq": 1.5, "values": [[1, 2]]}', 422, r"body\.seq: Input should be a valid integer, got 1\.5"),
    (b'{"seq": 1}', 422, r"body\.values: Field required"),
    (b'{"seq": 1, "values": [[1, 2]], "extra": 1}', 422, r"body\.extra: Extra inputs are not permitted"),
    (b'{"seq": 1, "values": [[1, 2]], "horizon": 25}', 422, r"horizon 25 is above the limit of 24"),
    (
        b'{"seq": 1, "values": [[1, 2]], "horizon": 0}',
        422,
        r"body\.horizon: Input should be greater than or equal to 1",
    ),
    (b"[1, 2]", 422, r"body: Input should be an object"),
]


@pytest.mark.parametrize(("body", "status", "detail"), BAD_OBSERVES, ids=[f"bad{i}" for i in range(len(BAD_OBSERVES))])
def test_bad_observes_are_4xx_with_a_clear_message_and_change_nothing(
    api: Api, body: bytes, status: int, detail: str
) -> None:
    stream = sid()
    observe(api, stream, 1, [[50.0, 40.0]])  # the stream exists, so a wrongly accepted seq 1 would show
    before = api.store.checksum()
    r = api.http.post(f"/v1/streams/{stream}/observe", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert re.fullmatch(detail.replace("{s}", stream), r.json()["detail"]), r.json()
    assert r.json()["error"] == ("malformed_json" if status == 400 else "invalid")
    assert api.store.checksum() == before


def test_a_stream_twice_in_one_bulk_request_is_applied_once(api: Api) -> None:
    stream, other, first, second = sid(), sid(), [[51.0, 41.0]], [[52.0, 39.0], [50.0, 40.0]]
    twice = [
        {"id": stream, "seq": 1, "values": first},
        {"id": other, "seq": 1, "values": second},
        {"id": stream, "seq": 2, "values": second},
    ]
    results = api.http.post("/v1/observe", json={"streams": twice}).json()["results"]
    assert results[0] == {"status": 200, "id": stream, "seq": 1, "prediction": replay(api.run, [first])[0].tolist()}
    assert results[1]["status"] == 200 and results[1]["prediction"] == replay(api.run, [second])[0].tolist()
    assert results[2] == {
        "id": stream,
        "status": 422,
        "detail": f"stream '{stream}' appears twice in one request; send its rows in one item",
        "error": "invalid",
    }
    assert state_of(api, stream)["seq"] == 1
    assert_state_equals(state_of(api, stream)["state"], replay(api.run, [first])[1])


def test_too_many_steps_and_streams_are_refused(api: Api) -> None:
    stream = sid()
    before = api.store.checksum()
    r = observe(api, stream, 1, [[1.0, 2.0]] * 65)
    assert (r.status_code, r.json()["detail"]) == (422, f"stream '{stream}': 65 rows in one request; at most 64")
    many = [{"id": sid(), "seq": 1, "values": [[1.0, 2.0]]} for _ in range(51)]
    r = api.http.post("/v1/observe", json={"streams": many})
    assert (r.status_code, r.json()["detail"]) == (422, "51 streams in one request; at most 50")
    heavy = [{"id": sid(), "seq": 1, "values": [[1.0, 2.0]] * 60} for _ in range(9)]
    r = api.http.post("/v1/observe", json={"streams": heavy})
    assert (r.status_code, r.json()["detail"]) == (422, "540 rows in one request; at most 500")
    # repeated items count too: each is answered (a 422 of its own), so each is work the limits bound
    repeated = [*many[:50], many[0]]
    r = api.http.post("/v1/observe", json={"streams": repeated})
    assert (r.status_code, r.json()["detail"]) == (422, "51 streams in one request; at most 50")
    again = [{"id": stream, "seq": 1, "values": [[1.0, 2.0]] * 60}] * 9
    r = api.http.post("/v1/observe", json={"streams": again})
    assert (r.status_code, r.json()["detail"]) == (422, "540 rows in one request; at most 500")
    bad_row = [{"id": sid(), "seq": 1, "values": [[1.0, 2.0]]}, {"id": stream, "seq": 1, "values": [[1.0]]}]
    r = api.http.post("/v1/observe", json={"streams": bad_row})  # the good item is not applied either
    assert (r.status_code, r.json()["detail"]) == (
        422,
        f"stream '{stream}': values row 0 has 1 numbers; the model takes 2 (load, temp)",
    )
    assert api.store.checksum() == before


def test_unknown_streams_and_bad_ids(api: Api) -> None:
    before = api.store.checksum()
    for method, path, body in [
        ("POST", "/v1/streams/nobody/forecast", {"horizon": 2}),
        ("GET", "/v1/streams/nobody/state", None),
        ("DELETE", "/v1/streams/nobody/state", None),
    ]:
        r = api.http.request(method, path, json=body)
        assert (r.status_code, r.json()) == (404, {"detail": "stream 'nobody' not found", "error": "not_found"})
    r = api.http.post("/v1/streams/a b/observe", json={"seq": 1, "values": [[1.0, 2.0]]})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("path.stream_id: String should match pattern '^[!-.0-~]{1,256}$', got 'a b'")
    r = api.http.post("/v1/streams/x/forecast", json={"horizon": 99})
    assert (r.status_code, r.json()["detail"]) == (422, "horizon 99 is above the limit of 24")
    assert api.store.checksum() == before


def test_stream_ids_longer_than_the_limit_are_refused_everywhere(api: Api) -> None:
    longest = "L" * 250 + uuid.uuid4().hex[:6]  # 256 characters: the longest id there may be
    assert observe(api, longest, 1, [[50.0, 40.0]]).status_code == 200
    assert state_of(api, longest)["seq"] == 1
    before = api.store.checksum()
    for too_long in (longest + "x", "y" * 1000):
        pattern = "String should match pattern '^[!-.0-~]{1,256}$'"
        for method, path, body in [
            ("POST", f"/v1/streams/{too_long}/observe", {"seq": 1, "values": [[1.0, 2.0]]}),
            ("POST", f"/v1/streams/{too_long}/forecast", {"horizon": 2}),
            ("GET", f"/v1/streams/{too_long}/state", None),
            ("PUT", f"/v1/streams/{too_long}/state", {"state": {}}),
            ("DELETE", f"/v1/streams/{too_long}/state", None),
        ]:
            r = api.http.request(method, path, json=body)
            assert r.status_code == 422, (method, path, r.text)
            assert r.json()["detail"].startswith(f"path.stream_id: {pattern}, got '{too_long[:20]}"), r.text
        item = {"id": too_long, "seq": 1, "values": [[1.0, 2.0]]}
        r = api.http.post("/v1/observe", json={"streams": [{"id": sid(), "seq": 1, "values": [[1.0, 2.0]]}, item]})
        assert r.status_code == 422 and r.json()["detail"].startswith(f"body.streams[1].id: {pattern}"), r.text
    assert api.store.checksum() == before


def test_a_405_names_every_method_of_the_path_in_allow(api: Api) -> None:
    for method, path, allow in [
        ("OPTIONS", "/v1/streams/x/state", "DELETE, GET, PUT"),
        ("POST", "/v1/streams/x/state", "DELETE, GET, PUT"),
        ("GET", "/v1/streams/x/observe", "POST"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/v1/observe", "POST"),
    ]:
        r = api.http.request(method, path)
        assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
        detail = f"method {method} is not allowed on {path}; it takes {allow}"
        assert r.json() == {"detail": detail, "error": "method_not_allowed"}
    assert api.http.get("/nowhere").status_code == 404  # other HTTP errors keep their handling


def test_bodies_over_the_limit_get_413_counted_on_the_bytes_received(api: Api) -> None:
    stream = sid()
    observe(api, stream, 1, [[50.0, 40.0]])
    before = api.store.checksum()
    big = b'{"seq": 2, "values": [[1, 2]]' + b" " * (70 * 1024) + b"}"

    def chunks() -> Iterator[bytes]:  # chunked transfer encoding: no Content-Length to trust
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    for content in (big, chunks()):
        r = api.http.post(
            f"/v1/streams/{stream}/observe", content=content, headers={"content-type": "application/json"}
        )
        assert (r.status_code, r.json()) == (
            413,
            {"detail": "request body is larger than the limit of 65536 bytes", "error": "too_large"},
        )
    assert api.store.checksum() == before
    fits = b'{"seq": 2, "values": [[50, 40]]' + b" " * (60 * 1024) + b"}"  # padding is fine under the limit
    r = api.http.post(f"/v1/streams/{stream}/observe", content=iter([fits[:1000], fits[1000:]]))
    assert r.status_code == 200 and r.json()["seq"] == 2


def test_a_body_that_is_not_sent_as_json_gets_415_and_changes_nothing(api: Api) -> None:
    """A form or text/plain post (what a web page may send across origins without a preflight) is
    refused on every endpoint with a body; JSON types, with or without parameters, and a request
    without a Content-Type are read."""
    import json

    stream = sid()
    observe(api, stream, 1, [[50.0, 40.0]])
    width = {name: w for name, w in ServedModel.from_run(api.run).layout}
    bodies = {
        f"/v1/streams/{stream}/observe": ("post", {"seq": 2, "values": [[50.0, 40.0]]}),
        "/v1/observe": ("post", {"streams": [{"id": stream, "seq": 2, "values": [[50.0, 40.0]]}]}),
        f"/v1/streams/{stream}/forecast": ("post", {"horizon": 2}),
        f"/v1/streams/{stream}/state": ("put", {"state": {k: [[0.1] * w] for k, w in width.items()}}),
    }
    before = api.store.checksum()
    for path, (method, body) in bodies.items():
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = api.http.request(method, path, content=json.dumps(body), headers={"content-type": media})
            want = f"content-type {media!r} is not JSON; send the body as application/json"
            assert (r.status_code, r.json()) == (415, {"detail": want, "error": "unsupported_media_type"}), path
    assert api.store.checksum() == before
    path = f"/v1/streams/{stream}/forecast"
    for media in ("application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json", None):
        headers = {} if media is None else {"content-type": media}
        r = api.http.post(path, content=json.dumps({"horizon": 2}), headers=headers)
        assert r.status_code == 200, (media, r.text)


# -- state GET / PUT / DELETE -----------------------------------------------------------------------


def test_put_state_is_validated_exactly_like_the_library(api: Api) -> None:
    spec = api.run.spec
    good = {name: [[0.1] * width] for name, width in ServedModel.from_run(api.run).layout}
    cases = [
        {k: v for k, v in good.items() if k != "layers.1.c"},  # missing c
        {**good, "layers.1.c": [[0.1] * 3]},  # wrong shape
        {**good, "layers.0.h": [[0.1] * 8, [0.2] * 8]},  # two rows
        {**good, "layers.0.h": [[float("nan")] * 8]},  # NaN
        {**good, "layers.2.h": [[0.0]]},  # unknown tensor
        {**good, "layers.0.c": [["a"] * 8]},  # not numbers
        {**good, "layers.0.c": [[0.1] * 8, [0.2] * 7]},  # ragged
    ]
    stream = sid()
    before = api.store.checksum()
    for d in cases:
        with pytest.raises(hs.StateError) as lib:
            hs.State.from_dict(spec, d, broadcast=True, batch_size=1)
        r = api.http.put(f"/v1/streams/{stream}/state", content=_json_with_nan({"state": d}))
        assert (r.status_code, r.json()) == (422, {"detail": str(lib.value), "error": "invalid"})
    huge = {**good, "layers.0.h": [[1e39] * 8]}  # finite in JSON, inf in float32
    r = api.http.put(f"/v1/streams/{stream}/state", json={"state": huge})
    assert (r.status_code, r.json()["detail"]) == (422, str(_lib_error(spec, huge)))
    assert r.json()["detail"] == "layer 0 (lstm, hidden 8) `h`: contains NaN or inf (8 non-finite values)"
    # every tensor two rows, consistent with each other: the stream's one row is asked for (a literal
    # message, so a library that stopped checking the batch could not agree with itself here)
    two = {name: [[0.1] * width] * 2 for name, width in ServedModel.from_run(api.run).layout}
    r = api.http.put(f"/v1/streams/{stream}/state", json={"state": two})
    detail = "layer 0 (lstm, hidden 8) `h`: expected shape (batch=1, hidden=8), got (2, 8)"
    assert (r.status_code, r.json()) == (422, {"detail": detail, "error": "invalid"})
    assert api.store.checksum() == before
    assert "layer 1 (lstm, hidden 16) `c`" in str(_lib_error(spec, cases[1]))  # the messages name layer and tensor


def _lib_error(spec: hs.StateSpec, d: dict[str, Any]) -> Exception:
    try:
        hs.State.from_dict(spec, d, broadcast=True, batch_size=1)
    except hs.StateError as e:
        return e
    raise AssertionError("no error")


def _json_with_nan(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()  # writes NaN as the bare token, as a careless client would


def test_put_then_observe_continues_from_the_put_state(api: Api) -> None:
    rng, stream = np.random.default_rng(6), sid()
    observe(api, stream, 1, rows(rng, 2))
    put = {
        name: (0.5 * rng.standard_normal((1, width))).tolist() for name, width in ServedModel.from_run(api.run).layout
    }
    version = state_of(api, stream)["version"]
    stale = api.http.put(f"/v1/streams/{stream}/state", json={"state": put, "version": version + 1})
    assert (stale.status_code, stale.json()["error"]) == (409, "version_conflict")
    r = api.http.put(f"/v1/streams/{stream}/state", json={"state": put, "seq": 7, "version": version})
    assert r.status_code == 200 and r.json()["seq"] == 7 and r.json()["version"] != version
    got = state_of(api, stream)
    assert got["seq"] == 7
    expected = hs.State.from_dict(api.run.spec, {k: torch.tensor(v, dtype=torch.float32) for k, v in put.items()})
    assert_state_equals(got["state"], expected)
    # The seq 7 answer was replaced by the PUT, and a rollout needs a last observed row.
    r = observe(api, stream, 7, rows(rng, 1))
    assert (r.status_code, r.json()["error"], r.json()["expected_seq"]) == (409, "replay_conflict", 8)
    r = api.http.post(f"/v1/streams/{stream}/forecast", json={"horizon": 2})
    assert r.status_code == 409 and "observe once first" in r.json()["detail"]
    after = rows(rng, 3)
    r = observe(api, stream, 8, after)
    assert r.json()["prediction"] == replay(api.run, [after], expected)[0].tolist()
    assert_state_equals(state_of(api, stream)["state"], replay(api.run, [after], expected)[1])


def test_delete_forgets_a_stream(api: Api) -> None:
    rng, stream = np.random.default_rng(7), sid()
    observe(api, stream, 1, rows(rng, 1))
    observe(api, stream, 2, rows(rng, 1))
    assert api.http.delete(f"/v1/streams/{stream}/state").status_code == 204
    assert api.http.get(f"/v1/streams/{stream}/state").status_code == 404
    fresh = rows(rng, 2)
    r = observe(api, stream, 1, fresh)
    assert r.status_code == 200 and r.json()["prediction"] == replay(api.run, [fresh])[0].tolist()


# -- model, health, metrics, docs -------------------------------------------------------------------


def test_model_health_metrics_and_docs(api: Api) -> None:
    model = api.http.get("/v1/model").json()
    assert model["inputs"] == ["load", "temp"] and model["targets"] == ["load", "temp"]
    assert model["fingerprint"] == api.run.spec.fingerprint()
    assert model["state_names"] == ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"]
    assert model["limits"]["max_steps"] == 64 and model["ttl"] is None
    local = api.store.local
    settings = (
        {"journal_mode": "wal", "synchronous": "full"} if local else {"appendonly": "yes", "appendfsync": "always"}
    )
    durability = {"mode": "strict", "durable": True, **settings}
    assert api.http.get("/healthz").json() == {"status": "ok", "store": "up", "durability": durability}
    observe(api, sid(), 1, [[50.0, 40.0]])
    text = api.http.get("/metrics").text
    assert api.http.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert (
        int(re.search(r'^hiddenstate_requests_total\{endpoint="observe",status="200"\} (\d+)$', text, re.M).group(1))
        >= 1
    )  # type: ignore[union-attr]
    assert f"hiddenstate_streams {api.store.count()}\n" in text
    assert re.search(r'^hiddenstate_batch_size_bucket\{le="\+Inf"\} [1-9]\d*$', text, re.M)
    assert re.search(r'^hiddenstate_observations_total\{outcome="advanced"\} [1-9]\d*$', text, re.M)
    assert re.search(r'^hiddenstate_request_seconds_count\{endpoint="observe"\} [1-9]\d*$', text, re.M)
    assert re.search(r"^hiddenstate_stream_steps_total [1-9]\d*$", text, re.M)
    labels = ",".join(f'{k}="{v}"' for k, v in sorted({"mode": "strict", **settings}.items()))
    assert f"\nhiddenstate_store_durable{{{labels}}} 1\n" in text
    schema = api.http.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/streams/{stream_id}/observe", "/v1/observe", "/v1/streams/{stream_id}/forecast",
        "/v1/streams/{stream_id}/state", "/v1/model", "/healthz", "/metrics",
    }  # fmt: skip
    body = schema["paths"]["/v1/observe"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BulkBody"}
    assert schema["components"]["schemas"]["BulkItem"]["properties"]["values"]["type"] == "array"
    assert "swagger-ui" in api.http.get("/docs").text


# -- startup refusals, TTL, a model that produces NaN -----------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_startup_refuses_states_of_another_spec(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, tmp_path: Path
) -> None:
    url = _store_url(kind, request, tmp_path)
    lstm = ServedModel.from_run(load_run(run_dir))
    Service(lstm, open_store(url)).store.close()  # pins the LSTM run's fingerprint
    gru = ServedModel.from_run(load_run(demo_run(tmp_path / "gru", layers=[("gru", 4)])))
    store = open_store(url)
    with pytest.raises(ServeError) as e:
        Service(gru, store)
    store.close()
    shown = url.split("?")[0] if kind == "redis" else url
    assert str(e.value).startswith(f"store {shown}" if kind == "sqlite" else f"store {url}")
    assert str(e.value).endswith(
        f"holds states of spec fingerprint '{lstm.spec.fingerprint()}' ([lstm 8, lstm 16]), but the model in "
        f"{gru.source} has '{gru.spec.fingerprint()}' ([gru 4]); "
        "serve it with another --store, or delete the old states"
    )


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_startup_refuses_records_of_other_columns_under_the_same_spec(
    kind: str, request: pytest.FixtureRequest, run_dir: Path, tmp_path: Path
) -> None:
    """A retrained model of the same spec with another input column: the stored last rows would be
    read with the wrong width (a forecast of an old stream was a 500), so the store is refused."""
    url = _store_url(kind, request, tmp_path)
    for api in _serve(run_dir, url):
        assert observe(api, "old", 1, [[50.0, 40.0]], horizon=2).status_code == 200
        before = api.store.checksum()
    wider = ServedModel.from_run(
        load_run(demo_run(tmp_path / "wider", inputs=("load", "temp", "hum"), targets=("load", "temp")))
    )
    assert wider.spec.fingerprint() == ServedModel.from_run(load_run(run_dir)).spec.fingerprint()
    store = open_store(url)
    with pytest.raises(ServeError) as e:
        Service(wider, store)
    assert store.checksum() == before
    store.close()
    assert str(e.value).endswith(
        'holds records of a model with columns {"inputs": ["load", "temp"], "targets": ["load", "temp"]}, but the '
        f'model in {wider.source} has {{"inputs": ["load", "temp", "hum"], "targets": ["load", "temp"]}}; '
        "serve it with another --store, or delete the old states"
    )


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ttl_expires_idle_streams(kind: str, request: pytest.FixtureRequest, run_dir: Path, tmp_path: Path) -> None:
    for api in _serve(run_dir, _store_url(kind, request, tmp_path), ttl=0.5):
        stream = sid()
        assert observe(api, stream, 1, [[50.0, 40.0]]).status_code == 200
        assert observe(api, stream, 2, [[50.0, 40.0]]).status_code == 200
        time.sleep(1.2)
        assert api.http.get(f"/v1/streams/{stream}/state").status_code == 404
        assert observe(api, stream, 3, [[50.0, 40.0]]).json()["expected_seq"] == 1
        assert observe(api, stream, 1, [[50.0, 40.0]]).status_code == 200
        assert api.http.get("/v1/model").json()["ttl"] == 0.5


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_nan_made_by_the_model_is_never_stored(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = NanWhenHigh(2, 2, [hs.LSTM(4)])
    scaler = StandardScaler.fit(np.random.default_rng(0).normal(50, 10, (100, 2)), columns=["load", "temp"])
    save_run(tmp_path / "nan", model, scaler=scaler, inputs=["load", "temp"], targets=["load", "temp"])
    for api in _serve(tmp_path / "nan", _store_url(kind, request, tmp_path)):
        calm, wild = sid(), sid()
        assert observe(api, wild, 1, [[50.0, 40.0]]).status_code == 200
        before = api.store.checksum()
        r = observe(api, wild, 2, [[500.0, 40.0]])  # finite, but the model turns it into NaN
        assert (r.status_code, r.json()) == (
            422,
            {
                "detail": f"stream '{wild}': the model produced NaN or inf at seq 2; the state was not advanced "
                "(check the values for outliers)",
                "error": "nonfinite",
            },
        )
        assert api.store.checksum() == before
        items = [{"id": calm, "seq": 1, "values": [[50.0, 41.0]]}, {"id": wild, "seq": 2, "values": [[900.0, 1.0]]}]
        results = api.http.post("/v1/observe", json={"streams": items}).json()["results"]
        assert [(x["status"], x.get("error")) for x in results] == [(200, None), (422, "nonfinite")]
        assert state_of(api, wild)["seq"] == 1 and state_of(api, calm)["seq"] == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(hs.ConfigError, match=r"^Limits\.max_steps must be a positive int, got 0$"):
        Limits(max_steps=0)


def test_an_unknown_path_is_a_404_with_its_code(api: Api) -> None:
    for method, path in (("GET", "/v2/x"), ("POST", "/v1/streams/a%2Fb/observe"), ("POST", "/v1/streams//observe")):
        r = api.http.request(method, path, json={})
        assert r.status_code == 404
        assert r.json() == {"detail": f"no such path: {method} {r.request.url.path}", "error": "not_found"}

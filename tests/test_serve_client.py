"""The Python client against a real server: answers, typed errors, states, odd stream ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import torch

import hiddenstate as hs
from hiddenstate.errors import SequenceGapError, StoreUnavailableError, StreamNotFoundError, VersionConflictError
from hiddenstate.runs.run import load_run
from hiddenstate.serve import Limits, ServedModel, Service, create_app, open_store
from hiddenstate.serve import client as client_module
from hiddenstate.serve.client import Answer, Client, RequestError
from hiddenstate.serve.stores.sqlite import SQLiteStore
from hiddenstate.serve.testing import ThreadServer, demo_run


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    folder = tmp_path_factory.mktemp("serve-client")
    run = load_run(demo_run(folder / "run"))
    service = Service(ServedModel.from_run(run), open_store(f"sqlite://{folder / 's.db'}"), limits=Limits(max_steps=8))
    with ThreadServer(create_app(service)) as server, Client(server.url) as c:
        yield c


def test_observe_and_retry(client: Client) -> None:
    first = client.observe("c-1", 1, np.array([[50.0, 40.0], [51.0, 41.0]]), horizon=3)
    assert isinstance(first, Answer) and first.id == "c-1" and first.seq == 1 and not first.replayed
    assert first.prediction.shape == (2,) and first.forecast is not None and first.forecast.shape == (3, 2)
    again = client.observe("c-1", 1, [[50.0, 40.0], [51.0, 41.0]], horizon=3)
    assert again.replayed and np.array_equal(again.prediction, first.prediction)
    assert np.array_equal(client.forecast("c-1", 3), first.forecast)


def test_refusals_raise_the_librarys_errors(client: Client) -> None:
    client.observe("c-2", 1, [[50.0, 40.0]])
    with pytest.raises(SequenceGapError, match=r"^stream 'c-2': expected seq 2, got 5$") as gap:
        client.observe("c-2", 5, [[50.0, 40.0]])
    assert gap.value.expected == 2
    with pytest.raises(StreamNotFoundError, match=r"^stream 'nobody' not found$"):
        client.get_state("nobody")
    with pytest.raises(RequestError, match=r"^422 invalid: stream 'c-2': values row 0 has 3 numbers") as bad:
        client.observe("c-2", 2, [[1.0, 2.0, 3.0]])
    assert (bad.value.status, bad.value.error) == (422, "invalid")
    with pytest.raises(RequestError, match=r"^409 replay_conflict: ") as conflict:
        client.observe("c-2", 1, [[1.0, 1.0]])
    assert conflict.value.expected_seq == 2
    with pytest.raises(VersionConflictError, match=r"version 1 was asked for"):
        client.put_state("c-2", client.get_state("c-2").tensors, version=1)


def test_states_round_trip_as_library_states(client: Client) -> None:
    client.observe("c-3", 1, [[50.0, 40.0]])
    stored = client.get_state("c-3")
    spec = client_spec(client)
    state = stored.to_state(spec)
    assert isinstance(state, hs.State) and state.batch_size == 1
    zeros = hs.State.zeros(spec, 1)
    written = client.put_state("c-3", zeros, seq=9)
    assert written.seq == 9 and written.version != stored.version
    assert client.get_state("c-3").to_state(spec).allclose(zeros)
    assert client.observe("c-3", 10, [[50.0, 40.0]]).seq == 10
    client.delete("c-3")
    with pytest.raises(StreamNotFoundError):
        client.delete("c-3")


def client_spec(client: Client) -> hs.StateSpec:
    return hs.StateSpec.from_json(client.model()["spec"])


def test_bulk_gives_an_answer_or_an_error_per_stream(client: Client) -> None:
    out = client.observe_many(
        [
            {"id": "m-1", "seq": 1, "values": [[50.0, 40.0]]},
            {"id": "m-2", "seq": 3, "values": [[50.0, 40.0]]},
            {"id": "m-3", "seq": 1, "values": np.ones((2, 2)), "horizon": 2},
        ]
    )
    assert isinstance(out[0], Answer) and out[0].seq == 1
    assert isinstance(out[1], SequenceGapError) and out[1].expected == 1
    assert isinstance(out[2], Answer) and out[2].forecast is not None and out[2].forecast.shape == (2, 2)


def test_odd_stream_ids_survive_the_url(client: Client) -> None:
    for stream in ("a:b@c", "x%y?z#w", "dots.and-dashes_~", "quote'\"", "a+b=c&d"):
        assert client.observe(stream, 1, [[50.0, 40.0]]).id == stream
        assert client.get_state(stream).seq == 1


def test_health_model_and_metrics(client: Client) -> None:
    assert client.healthy()
    assert client.model()["inputs"] == ["load", "temp"]
    assert "hiddenstate_requests_total" in client.metrics()
    with Client("http://127.0.0.1:9", timeout=0.5) as nowhere:
        assert not nowhere.healthy()


def test_put_state_takes_a_mapping_of_arrays(client: Client) -> None:
    spec = client_spec(client)
    tensors = {name: torch.full((1, t.shape[1]), 0.25) for name, t in hs.State.zeros(spec, 1).to_dict().items()}
    client.put_state("c-4", tensors)
    got = client.get_state("c-4")
    assert got.seq == 0 and all(np.all(v == np.float32(0.25)) for v in got.tensors.values())


class DropsFirstAnswer(httpx.BaseTransport):
    """A real HTTP transport that loses the answer of the first request after the server applied it
    (``meanwhile`` runs between the two, as another client would)."""

    def __init__(self, meanwhile: Callable[[], object] | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.dropped = 0
        self.meanwhile = meanwhile

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.dropped == 0:
            self.dropped += 1
            response.close()
            if self.meanwhile is not None:
                self.meanwhile()
            raise httpx.ReadError("connection reset", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_lost_answer_is_fetched_again_without_advancing_twice(client: Client) -> None:
    transport = DropsFirstAnswer()
    with httpx.Client(transport=transport, timeout=30) as http, Client(client.base_url, http=http) as flaky:
        answer = flaky.observe("c-5", 1, [[50.0, 40.0]])
    assert transport.dropped == 1 and answer.replayed and answer.seq == 1
    assert client.get_state("c-5").seq == 1
    assert client.observe("c-5", 2, [[50.0, 40.0]]).seq == 2


def test_a_put_whose_answer_was_lost_is_not_sent_again(client: Client) -> None:
    client.observe("c-6", 1, [[50.0, 40.0]])
    held = client.get_state("c-6")
    # With a version: it was applied, so sending it again would be refused as a conflict.
    transport = DropsFirstAnswer()
    with httpx.Client(transport=transport, timeout=30) as http, Client(client.base_url, http=http) as flaky:
        with pytest.raises(httpx.ReadError):
            flaky.put_state("c-6", held.tensors, seq=5, version=held.version)
    assert transport.dropped == 1 and client.get_state("c-6").seq == 5
    # Without one: sent again, it would undo an observe another client was answered for meanwhile.
    transport = DropsFirstAnswer(meanwhile=lambda: client.observe("c-6", 6, [[50.0, 40.0]]))
    with httpx.Client(transport=transport, timeout=30) as http, Client(client.base_url, http=http) as flaky:
        with pytest.raises(httpx.ReadError):
            flaky.put_state("c-6", held.tensors, seq=5)
    assert transport.dropped == 1 and client.get_state("c-6").seq == 6


@pytest.mark.parametrize("retries", [-1, 1.5, True, "2"])
def test_a_retry_count_that_is_not_a_whole_number_from_0_is_refused(retries: object) -> None:
    with pytest.raises(hs.ConfigError, match=f"^Client: retries must be an int >= 0, got {retries!r}$"):
        Client(retries=retries)  # type: ignore[arg-type]


class DownForWrites(SQLiteStore):
    """A real SQLite store whose next ``down`` writes fail as a store that is down would, before
    anything is written; counts every write asked of it."""

    def __init__(self, path, down: int) -> None:
        super().__init__(path)
        self.down, self.asked = down, 0

    def write(self, writes):  # type: ignore[no-untyped-def]
        self.asked += 1
        if self.down > 0:
            self.down -= 1
            raise StoreUnavailableError(self.url, "disk I/O error")
        return super().write(writes)


@pytest.fixture
def down_server(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DownForWrites, str, list[float]]]:
    """A real server over a store that is down for its first two writes; the client's sleeps are
    recorded instead of slept."""
    store = DownForWrites(tmp_path / "s.db", down=2)
    service = Service(ServedModel.from_run(load_run(demo_run(tmp_path / "run"))), store, limits=Limits(max_steps=8))
    slept: list[float] = []
    monkeypatch.setattr(client_module, "sleep", slept.append)
    with ThreadServer(create_app(service)) as server:
        yield store, server.url, slept


def test_a_store_that_is_down_is_retried_after_its_retry_after(down_server) -> None:
    store, url, slept = down_server
    with Client(url, retries=2) as c:
        answer = c.observe("d-1", 1, [[50.0, 40.0]])
        assert answer.seq == 1 and not answer.replayed  # applied once, by the third attempt
        assert store.asked == 3 and slept == [1.0, 1.0]  # the service's Retry-After: 1
        assert c.get_state("d-1").seq == 1
        # a PUT is not sent again: a store that broke off after writing answers 503 as well
        store.down = 1
        with pytest.raises(RequestError) as refused:
            c.put_state("d-1", c.get_state("d-1").tensors, seq=4)
        assert refused.value.status == 503 and store.asked == 4 and slept == [1.0, 1.0]
        assert c.get_state("d-1").seq == 1


def test_a_store_that_stays_down_raises_its_503_after_the_retries(down_server) -> None:
    store, url, slept = down_server
    with Client(url, retries=1, max_wait=0.25) as c:
        with pytest.raises(RequestError) as refused:
            c.observe("d-2", 1, [[50.0, 40.0]])
        assert (refused.value.status, refused.value.error) == (503, "store_unavailable")
        assert store.asked == 2 and slept == [0.25]  # Retry-After capped at max_wait
        with pytest.raises(StreamNotFoundError):
            c.get_state("d-2")  # nothing was written
    with Client(url, retries=0) as c:  # the store is back, but retries=0 never waits
        assert c.observe("d-2", 1, [[50.0, 40.0]]).seq == 1 and slept == [0.25]


@pytest.mark.parametrize("max_wait", [-1, float("inf"), float("nan"), True, "1"])
def test_a_max_wait_that_is_not_a_number_of_seconds_is_refused(max_wait: object) -> None:
    with pytest.raises(hs.ConfigError, match=f"^Client: max_wait must be a number of seconds >= 0, got {max_wait!r}$"):
        Client(max_wait=max_wait)  # type: ignore[arg-type]

"""A small Python client for the streaming service (``hiddenstate serve``), over httpx.

    >>> from hiddenstate.serve.client import Client
    >>> client = Client("http://127.0.0.1:8000")          # doctest: +SKIP
    >>> client.observe("sensor-1", 1, [[50.2, 40.1]]).prediction   # doctest: +SKIP
    array([49.8, 40.6])

Refusals raise typed errors from :mod:`hiddenstate.errors`, found by the body's error code in
its one table: :class:`SequenceGapError` (with ``.expected``), :class:`StreamNotFoundError`,
:class:`VersionConflictError`, and :class:`RequestError` (a :class:`ServeError` with
``.status``, ``.error``, ``.detail`` and ``.kind``, the class of its code) for the rest.
A repeated seq is not an error: the service answers it again, and :attr:`Answer.replayed`
says so, so retrying a request whose answer was lost is always safe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import sleep
from typing import TYPE_CHECKING, Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import (
    ConfigError,
    RequestError,
    SequenceGapError,
    ServeError,
    StoreUnavailableError,
    StreamNotFoundError,
    VersionConflictError,
    error_for_code,
)
from hiddenstate.state import State

if TYPE_CHECKING:
    import httpx
else:
    httpx = require("httpx", "serve")

__all__ = ["Answer", "Client", "RequestError", "StreamState"]


@dataclass(frozen=True)
class Answer:
    """One stream's observe answer: ``prediction`` ``(n_targets,)`` and ``forecast`` ``(horizon, n_targets)``,
    original units. ``replayed`` is true when the seq had been applied already (a retry)."""

    id: str
    seq: int
    prediction: np.ndarray
    forecast: np.ndarray | None = None
    replayed: bool = False


@dataclass(frozen=True)
class StreamState:
    """A stream's stored state: ``tensors`` by ``State.to_dict()`` names, each ``(1, hidden)``, normalised."""

    id: str
    seq: int
    version: int
    tensors: dict[str, np.ndarray]

    def to_state(self, spec: Any) -> State:
        """The state as a :class:`~hiddenstate.state.State` of ``spec`` (validated)."""
        import torch

        return State.from_dict(spec, {k: torch.from_numpy(v) for k, v in self.tensors.items()})


def _answer(data: Mapping[str, Any], replayed: bool = False) -> Answer:
    forecast = data.get("forecast")
    return Answer(
        id=data["id"],
        seq=int(data["seq"]),
        prediction=np.asarray(data["prediction"], dtype=np.float64),
        forecast=None if forecast is None else np.asarray(forecast, dtype=np.float64),
        replayed=replayed,
    )


def _raise(status: int, body: Mapping[str, Any], stream_id: str | None, seq: int | None) -> None:
    error, detail = str(body.get("error", "")), str(body.get("detail", ""))
    kind = error_for_code(error)
    if kind is SequenceGapError and stream_id is not None and seq is not None and "expected_seq" in body:
        raise SequenceGapError(stream_id, int(body["expected_seq"]), seq)
    if kind is StreamNotFoundError and stream_id is not None:
        raise StreamNotFoundError(stream_id)
    if kind is VersionConflictError:
        raise VersionConflictError(detail)
    raise RequestError(status, error or "http_error", detail or f"HTTP {status}", body.get("expected_seq"))


class Client:
    """Talks to one service at ``base_url``; use as a context manager or call :meth:`close`.

    ``http`` is an httpx.Client to use instead of a new one (for a custom transport or limits).
    A request whose connection drops before the answer arrives (say, a keep-alive connection the
    server closed as it was reused) is sent again, up to ``retries`` times: the seq contract makes
    that safe, since an observe already applied is answered again, not applied twice. PUT and
    DELETE are never resent: no seq makes them safe to repeat. A PUT applied before its answer
    was lost would be applied again over whatever came after it (an observe another client was
    answered for), or, with a ``version``, refused as a conflict although it was applied; the
    error is raised instead, and :meth:`get_state` tells what the store holds.

    A 503 ``store_unavailable`` or ``store_busy`` (the store is down or lost its compare-and-set
    tries) is sent again after the ``Retry-After`` seconds it names, at most ``max_wait`` each, up
    to ``retries`` times, except a PUT or DELETE: a store whose connection broke just after it
    wrote answers 503 too, which the seq makes safe for an observe (the retry is a replay) and
    nothing makes safe for a PUT. When the store stays down, the last refusal is raised as a
    :class:`RequestError` with status 503.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 30.0,
        retries: int = 2,
        max_wait: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"Client: retries must be an int >= 0, got {retries!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or not 0 <= max_wait < math.inf:
            raise ConfigError(f"Client: max_wait must be a number of seconds >= 0, got {max_wait!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.max_wait = float(max_wait)
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._owns = http is None

    def _call(
        self, method: str, path: str, body: Any = None, *, stream_id: str | None = None, seq: int | None = None
    ) -> httpx.Response:
        # after a dropped connection, or a refusal that says to try again later: never a PUT or
        # DELETE, which a store that broke off after writing may have applied (no seq guards them)
        resends = waits = 0 if method in ("PUT", "DELETE") else self.retries
        while True:
            try:
                response = self._http.request(method, f"{self.base_url}{path}", json=body)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if resends == 0:
                    raise
                resends -= 1
                continue
            wait = self._retry_after(response)
            if wait is None or waits == 0:
                break
            waits -= 1
            sleep(wait)
        if response.status_code >= 400:
            try:
                data = response.json()
            except ValueError:
                data = {"detail": response.text[:200]}
            _raise(response.status_code, data if isinstance(data, dict) else {}, stream_id, seq)
        return response

    @staticmethod
    def _path(stream_id: str) -> str:
        from urllib.parse import quote

        return f"/v1/streams/{quote(stream_id, safe='')}"

    def _retry_after(self, response: httpx.Response) -> float | None:
        """The seconds to wait before sending again, for the service's 503 ``store_unavailable``
        with a ``Retry-After`` in seconds (capped at ``max_wait``); None for any other answer."""
        if response.status_code != 503 or "retry-after" not in response.headers:
            return None
        try:
            code = response.json().get("error")
            seconds = float(response.headers["retry-after"])
        except (ValueError, AttributeError):
            return None
        kind = error_for_code(str(code))
        if kind is None or not issubclass(kind, StoreUnavailableError) or not 0 <= seconds < math.inf:
            return None
        return min(seconds, self.max_wait)

    def observe(
        self, stream_id: str, seq: int, values: Sequence[Sequence[float]] | np.ndarray, *, horizon: int | None = None
    ) -> Answer:
        """Advance ``stream_id`` through ``values`` ``(steps, n_inputs)`` (original units) as seq ``seq``."""
        body: dict[str, Any] = {"seq": seq, "values": np.asarray(values, dtype=np.float64).tolist()}
        if horizon is not None:
            body["horizon"] = horizon
        r = self._call("POST", f"{self._path(stream_id)}/observe", body, stream_id=stream_id, seq=seq)
        return _answer(r.json(), replayed=r.headers.get("x-hiddenstate-replayed") == "true")

    def observe_many(self, items: Iterable[Mapping[str, Any]]) -> list[Answer | RequestError | ServeError]:
        """The bulk observe: items ``{"id", "seq", "values", "horizon"?}``; one Answer or error per item, in order."""
        streams = []
        for item in items:
            body = {
                "id": item["id"],
                "seq": item["seq"],
                "values": np.asarray(item["values"], dtype=np.float64).tolist(),
            }
            if item.get("horizon") is not None:
                body["horizon"] = item["horizon"]
            streams.append(body)
        results: list[Answer | RequestError | ServeError] = []
        for data, sent in zip(
            self._call("POST", "/v1/observe", {"streams": streams}).json()["results"], streams, strict=True
        ):
            if data["status"] == 200:
                results.append(_answer(data))
            else:
                try:
                    _raise(int(data["status"]), data, sent["id"], sent["seq"])
                except ServeError as e:
                    results.append(e)
        return results

    def forecast(self, stream_id: str, horizon: int) -> np.ndarray:
        """``(horizon, n_targets)`` in original units from the stored state; nothing changes."""
        r = self._call("POST", f"{self._path(stream_id)}/forecast", {"horizon": horizon}, stream_id=stream_id)
        return np.asarray(r.json()["forecast"], dtype=np.float64)

    def get_state(self, stream_id: str) -> StreamState:
        data = self._call("GET", f"{self._path(stream_id)}/state", stream_id=stream_id).json()
        tensors = {k: np.asarray(v, dtype=np.float32) for k, v in data["state"].items()}
        return StreamState(data["id"], int(data["seq"]), int(data["version"]), tensors)

    def put_state(
        self, stream_id: str, state: State | Mapping[str, Any], *, seq: int | None = None, version: int | None = None
    ) -> StreamState:
        """Replace the stream's state (a one-row State or a ``to_dict()``-style mapping), normalised units."""
        tensors = state.to_dict() if isinstance(state, State) else state
        body: dict[str, Any] = {"state": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in tensors.items()}}
        if seq is not None:
            body["seq"] = seq
        if version is not None:
            body["version"] = version
        data = self._call("PUT", f"{self._path(stream_id)}/state", body, stream_id=stream_id).json()
        stored = {k: np.asarray(v, dtype=np.float32).reshape(1, -1) for k, v in body["state"].items()}
        return StreamState(stream_id, int(data["seq"]), int(data["version"]), stored)

    def delete(self, stream_id: str) -> None:
        self._call("DELETE", f"{self._path(stream_id)}/state", stream_id=stream_id)

    def model(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/model").json())

    def healthy(self) -> bool:
        try:
            return self._http.get(f"{self.base_url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return self._call("GET", "/metrics").text

    def close(self) -> None:
        if self._owns:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

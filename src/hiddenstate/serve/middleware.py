"""ASGI middleware of the service: the body limit on the bytes actually received, and request metrics.

It sits outside FastAPI's routing, so a body over the limit is refused (413) before anything
parses it, however it is sent: with a Content-Length (refused before reading) or chunked (counted
as it arrives). Every request is timed and counted by a low-cardinality endpoint name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hiddenstate.errors import BodyTooLargeError
from hiddenstate.serve.service import Service

__all__ = ["BodyLimit"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _endpoint(method: str, path: str) -> str:
    """A low-cardinality name for metrics: the route, not the stream id."""
    if path.startswith("/v1/streams/"):
        tail = path.rsplit("/", 1)[-1]
        if tail == "state":
            return {"GET": "state_get", "PUT": "state_put", "DELETE": "state_delete"}.get(method, "other")
        return tail if tail in ("observe", "forecast") else "other"
    return {
        "/v1/observe": "observe_bulk",
        "/v1/model": "model",
        "/healthz": "healthz",
        "/metrics": "metrics",
        "/docs": "docs",
        "/openapi.json": "docs",
    }.get(path, "other")


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit on the bytes actually received (413), and
    time every request for the metrics. Content-Length is only trusted to refuse early."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], service: Service) -> None:
        self.app = app
        self.service = service
        self.limit = service.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        endpoint = _endpoint(scope["method"], scope["path"])
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read(scope, receive)
                if body is None:
                    await self._too_large(send_and_note)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_and_note)
        finally:
            self.service.metrics.request(endpoint, status[0], time.perf_counter() - began)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        error = BodyTooLargeError(f"request body is larger than the limit of {self.limit} bytes")
        body = json.dumps({"detail": str(error), "error": error.code}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.http_status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

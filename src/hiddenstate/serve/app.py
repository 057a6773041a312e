"""The HTTP face of the service: FastAPI routes, error mapping, body limit and metrics.

Endpoints (OpenAPI at ``/docs``)::

    POST   /v1/streams/{id}/observe    {"seq": n, "values": [[...], ...], "horizon": H?}
    POST   /v1/observe                 {"streams": [{"id": ..., "seq": ..., "values": ...}, ...]}
    POST   /v1/streams/{id}/forecast   {"horizon": H}            the state does not change
    GET    /v1/streams/{id}/state      {"seq": n, "version": v, "state": {"layers.0.h": [[...]], ...}}
    PUT    /v1/streams/{id}/state      {"state": {...}, "seq": n?, "version": v?}
    DELETE /v1/streams/{id}/state
    GET    /v1/model   /healthz   /metrics

Every refusal is a 4xx with ``{"detail": "..."}`` naming what is wrong: 400 malformed JSON,
404 unknown stream, 409 sequence gap or lost version (with ``expected_seq``), 413 body over
the limit (counted on the bytes received, whatever Content-Length says), 422 anything the
model cannot take. A refused request changes nothing in the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import redis
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json

from hiddenstate import __version__
from hiddenstate.errors import HiddenStateError, SequenceGapError, ServeError, StreamNotFoundError, VersionConflictError
from hiddenstate.serve.middleware import BodyLimit
from hiddenstate.serve.service import Outcome, Service

__all__ = ["create_app"]

STREAM_ID = r"^[!-.0-~]{1,256}$"  # printable ASCII without space and "/"
MAX_SEQ = 2**62
_M = TypeVar("_M", bound=BaseModel)

StreamId = Annotated[
    str, Path(pattern=STREAM_ID, description="The stream's id: 1 to 256 printable ASCII characters, no space or '/'.")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ObserveBody(_Strict):
    seq: int = Field(ge=1, le=MAX_SEQ, description="1 for a new stream, then one more per observe.")
    values: list[list[float]] = Field(
        min_length=1, description="One row per step, one number per input column, in original units."
    )
    horizon: int | None = Field(default=None, ge=1, description="Also forecast this many steps.")


class BulkItem(ObserveBody):
    id: str = Field(pattern=STREAM_ID, description="The stream's id.")


class BulkBody(_Strict):
    streams: list[BulkItem] = Field(min_length=1, description="One item per stream; each stream at most once.")


class ForecastBody(_Strict):
    horizon: int = Field(ge=1, description="Steps to forecast.")
    quantiles: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=99,
        description="Quantiles in (0, 1) over sample paths (likelihood models).",
    )
    samples: int | None = Field(
        default=None, ge=1, le=1000, description="Return this many sample paths (likelihood models)."
    )
    seed: int | None = Field(default=None, ge=0, description="Seed of the sample paths: the same seed, the same paths.")


class PutStateBody(_Strict):
    state: dict[str, Any] = Field(
        description="Tensors by the names of State.to_dict(): {'layers.0.h': [[...]], ...}, one row, normalised units."
    )
    seq: int | None = Field(default=None, ge=0, le=MAX_SEQ, description="The stream's seq from now (default: kept).")
    version: int | None = Field(default=None, ge=0, description="Apply only if the stored version is this one.")


class Answer(BaseModel):
    id: str
    seq: int
    prediction: list[float] = Field(description="The next step's targets, original units.")
    forecast: list[list[float]] | None = Field(default=None, description="(horizon, targets), original units.")


class BulkResult(BaseModel):
    id: str
    status: int = Field(description="200, or the status this stream alone would have got (409, 422).")
    seq: int | None = None
    prediction: list[float] | None = None
    forecast: list[list[float]] | None = None
    detail: str | None = None
    error: str | None = None
    expected_seq: int | None = None


class BulkAnswer(BaseModel):
    results: list[BulkResult]


class ForecastAnswer(BaseModel):
    id: str
    seq: int
    method: str
    forecast: list[list[float]] = Field(description="(horizon, targets), original units; the paths' mean for 'paths'.")
    quantiles: dict[str, list[list[float]]] | None = Field(default=None, description="Per quantile (horizon, targets).")
    samples: list[list[list[float]]] | None = Field(default=None, description="(samples, horizon, targets).")


class StateAnswer(BaseModel):
    id: str
    seq: int
    version: int
    state: dict[str, list[list[float]]]


class PutAnswer(BaseModel):
    id: str
    seq: int
    version: int


class ErrorBody(BaseModel):
    detail: str = Field(description="One line: what is wrong and where.")
    error: str = Field(
        description="A stable code: malformed_json, invalid, not_found, sequence_gap, replay_conflict, "
        "version_conflict, conflict, too_large, nonfinite, store_unavailable."
    )
    expected_seq: int | None = Field(default=None, description="With sequence_gap and replay_conflict.")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, status, headers=headers, media_type="application/json")


def _answer_json(data: Any, headers: dict[str, str] | None = None) -> Response:
    """An observe's answer, encoded by pydantic's serializer (about twice as fast as ``json.dumps``
    on thousands of floats). The service never answers a NaN or inf (it checks every prediction and
    forecast before it stores or answers them), which is why this one needs no ``allow_nan=False``."""
    return Response(to_json(data), 200, headers=headers, media_type="application/json")


def _outcome_response(o: Outcome) -> Response:
    if o.status == 200:
        return _answer_json(o.answer, {"X-Hiddenstate-Replayed": "true"} if o.replayed else None)
    body: dict[str, Any] = {"detail": o.detail, "error": o.error}
    if o.expected_seq is not None:
        body["expected_seq"] = o.expected_seq
    return _json(body, o.status)


def _bulk_part(stream_id: str, o: Outcome) -> dict[str, Any]:
    if o.status == 200:
        return {"status": 200, **(o.answer or {})}
    body: dict[str, Any] = {"id": stream_id, "status": o.status, "detail": o.detail, "error": o.error}
    if o.expected_seq is not None:
        body["expected_seq"] = o.expected_seq
    return body


def create_app(service: Service, *, title: str = "hiddenstate") -> FastAPI:
    """The FastAPI application around ``service`` (started and stopped with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title=f"{title} streaming service",
        version=__version__,
        description="Each stream's hidden state kept durably; observe advances it one step batch at a time.",
        lifespan=lifespan,
    )
    app.state.service = service
    _handlers(app)

    @app.post(
        "/v1/streams/{stream_id}/observe",
        response_model=Answer,
        responses=_errors(400, 409, 413, 422),
        openapi_extra=_body_doc(ObserveBody),
        summary="Advance one stream through new rows; answer the next-step prediction",
    )
    async def observe(stream_id: StreamId, request: Request) -> Response:
        body = await parse_body(request, ObserveBody)
        items = service.observations([(stream_id, body.seq, body.values, body.horizon)])
        (outcome,) = await service.observe(items)
        return _outcome_response(outcome)

    @app.post(
        "/v1/observe",
        response_model=BulkAnswer,
        responses=_errors(400, 413, 422),
        openapi_extra=_body_doc(BulkBody),
        summary="Advance many streams in one request; each item gets its own status",
    )
    async def observe_bulk(request: Request) -> Response:
        body = await parse_body(request, BulkBody)
        items = service.observations([(i.id, i.seq, i.values, i.horizon) for i in body.streams])
        outcomes = await service.observe(items)
        return _answer_json({"results": [_bulk_part(i.stream_id, o) for i, o in zip(items, outcomes, strict=True)]})

    @app.post(
        "/v1/streams/{stream_id}/forecast",
        response_model=ForecastAnswer,
        responses=_errors(400, 404, 409, 413, 422),
        openapi_extra=_body_doc(ForecastBody),
        summary="Forecast from the stored state without changing it",
    )
    async def forecast(stream_id: StreamId, request: Request) -> Response:
        body = await parse_body(request, ForecastBody)
        return _json(await service.forecast(stream_id, body.horizon, body.quantiles, body.samples, body.seed))

    @app.get(
        "/v1/streams/{stream_id}/state",
        response_model=StateAnswer,
        responses=_errors(404, 422),
        summary="The stream's seq, version and state (normalised units)",
    )
    async def get_state(stream_id: StreamId) -> Response:
        return _json(await service.get_state(stream_id))

    @app.put(
        "/v1/streams/{stream_id}/state",
        response_model=PutAnswer,
        responses=_errors(400, 409, 413, 422),
        openapi_extra=_body_doc(PutStateBody),
        summary="Replace the stream's state, validated like State.from_dict",
    )
    async def put_state(stream_id: StreamId, request: Request) -> Response:
        body = await parse_body(request, PutStateBody)
        return _json(await service.put_state(stream_id, body.state, body.seq, body.version))

    @app.delete(
        "/v1/streams/{stream_id}/state",
        status_code=204,
        responses=_errors(404, 422),
        summary="Forget the stream",
    )
    async def delete_state(stream_id: StreamId) -> Response:
        await service.delete(stream_id)
        return Response(status_code=204)

    @app.get("/v1/model", summary="The served model: columns, spec, fingerprint, limits")
    async def model_info() -> dict[str, Any]:
        info = service.served.info()
        info["store"] = service.store.url
        info["limits"] = service.limits.to_json()
        info["max_batch"] = service.batcher.max_batch
        info["max_wait_ms"] = service.batcher.max_wait * 1000
        info["ttl"] = service.store.ttl
        return info

    @app.get("/healthz", summary="200 when the store answers")
    async def healthz() -> dict[str, str]:
        await service.ping()
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        text = service.metrics.render(
            streams=await service.count(),
            info={"fingerprint": service.served.spec.fingerprint(), "version": __version__},
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyLimit, service=service)
    _document_bodies(app)
    return app


BODIES = (ObserveBody, BulkBody, ForecastBody, PutStateBody)


async def parse_body(request: Request, model: type[_M]) -> _M:
    """The request body validated as ``model`` by pydantic's own JSON parser, straight from the bytes.

    Faster than ``json.loads`` then validation, and NaN/Infinity tokens reach the validator,
    which refuses them (``allow_inf_nan=False``). Errors become a RequestValidationError.
    """
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _document_bodies(app: FastAPI) -> None:
    """Put the request models (parsed by :func:`parse_body`, not by FastAPI) into the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        found = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODIES:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            found.update(js.pop("$defs", {}))
            found[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _describe_validation(err: RequestValidationError) -> tuple[int, str]:
    """One line for the first error: where (``body.values[0][1]``) and what."""
    errors = err.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return 400, f"malformed JSON: {ctx.get('error', first.get('msg'))}"
    where = ""
    for part in first.get("loc", ()):
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    msg = str(first.get("msg", "invalid"))
    if "input" in first and first.get("type") in ("finite_number", "int_type", "float_type", "string_pattern_mismatch"):
        msg += f", got {first['input']!r}"[:200]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {msg}{more}"


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        status, detail = _describe_validation(exc)
        return _json({"detail": detail, "error": "malformed_json" if status == 400 else "invalid"}, status)

    @app.exception_handler(HiddenStateError)
    async def ours(request: Request, exc: HiddenStateError) -> Response:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, StreamNotFoundError):
            status, body["error"] = 404, "not_found"
        elif isinstance(exc, SequenceGapError):
            status, body["error"], body["expected_seq"] = 409, "sequence_gap", exc.expected
        elif isinstance(exc, VersionConflictError):
            status, body["error"] = 409, "version_conflict"
        elif isinstance(exc, ServeError):
            status, body["error"] = 409, "conflict"
        else:  # StateError, ShapeError, ConfigError, DataError: the request asks what the model cannot do
            status, body["error"] = 422, "invalid"
        return _json(body, status)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> Response:
        return _json({"detail": "malformed JSON: nested too deeply", "error": "malformed_json"}, 400)

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(sqlite3.OperationalError)
    async def store_down(request: Request, exc: Exception) -> Response:
        return _json({"detail": f"the state store is unavailable: {exc}", "error": "store_unavailable"}, 503)

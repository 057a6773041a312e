"""The HTTP face of the service: FastAPI routes, error mapping, body limit and metrics.

Endpoints (OpenAPI at ``/docs``)::

    POST   /v1/streams/{id}/observe    {"seq": n, "values": [[...], ...], "horizon": H?}
    POST   /v1/observe                 {"streams": [{"id": ..., "seq": ..., "values": ...}, ...]}
    POST   /v1/streams/{id}/forecast   {"horizon": H}            the state does not change
    GET    /v1/streams/{id}/state      {"seq": n, "version": v, "state": {"layers.0.h": [[...]], ...}}
    PUT    /v1/streams/{id}/state      {"state": {...}, "seq": n?, "version": v?}
    DELETE /v1/streams/{id}/state
    GET    /v1/model   /healthz   /metrics

Every refusal is a 4xx with ``{"detail": "...", "error": "code"}`` naming what is wrong: 400
malformed JSON, 404 unknown stream, 409 sequence gap or lost version (with ``expected_seq``),
413 body over the limit (counted on the bytes received, whatever Content-Length says), 422
anything the model cannot take. A store that is down or cannot write gives 503
``store_unavailable`` with a ``Retry-After`` header. A refused request changes nothing in the
store. Statuses and codes come from the one table in :mod:`hiddenstate.errors`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from hiddenstate._extras import require

require("fastapi", "serve")
require("pydantic", "serve")

from fastapi import FastAPI, Path, Request  # noqa: E402
from fastapi.exception_handlers import http_exception_handler  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import PlainTextResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator  # noqa: E402
from pydantic_core import to_json  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.routing import Match  # noqa: E402

from hiddenstate import __version__  # noqa: E402
from hiddenstate.errors import (  # noqa: E402
    HiddenStateError,
    MalformedRequestError,
    SequenceGapError,
    ShapeError,
    StateError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
    error_for_code,
)
from hiddenstate.serve.intake import check_bulk  # noqa: E402
from hiddenstate.serve.middleware import BodyLimit  # noqa: E402
from hiddenstate.serve.service import Outcome, Service  # noqa: E402

__all__ = ["create_app"]

STREAM_ID = r"^[!-.0-~]{1,256}$"  # printable ASCII without space and "/"
MAX_SEQ = 2**62
# The largest float64 that float32 rounds to a finite value (2**128 - 2**103 and above become inf).
_FLOAT32_FINITE = 3.4028235677973362e38
_M = TypeVar("_M", bound=BaseModel)

StreamId = Annotated[
    str, Path(pattern=STREAM_ID, description="The stream's id: 1 to 256 printable ASCII characters, no space or '/'.")
]


def _integral(value: Any) -> Any:
    """A JSON number such as ``3.0`` is an integer to JSON Schema, so the service takes it as one;
    ``3.5``, ``"3"`` and ``true`` stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ObserveBody(_Strict):
    seq: int = Field(ge=1, le=MAX_SEQ, description="1 for a new stream, then one more per observe.")
    values: list[list[float]] = Field(
        min_length=1, description="One row per step, one number per input column, in original units."
    )
    horizon: int | None = Field(default=None, ge=1, description="Also forecast this many steps.")
    _integral = field_validator("seq", "horizon", mode="before")(_integral)


class BulkItem(ObserveBody):
    id: str = Field(pattern=STREAM_ID, description="The stream's id.")


class BulkBody(_Strict):
    streams: list[BulkItem] = Field(
        min_length=1, description="One item per stream; a stream's second item is not applied and gets status 422."
    )


class ForecastBody(_Strict):
    horizon: int = Field(ge=1, description="Steps to forecast.")
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=99,
        description="Quantiles in (0, 1) over sample paths (likelihood models).",
    )
    samples: int | None = Field(
        default=None, ge=1, le=1000, description="Return this many sample paths (likelihood models)."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**64 - 1, description="Seed of the sample paths: the same seed, the same paths."
    )
    _integral = field_validator("horizon", "samples", "seed", mode="before")(_integral)


class PutStateBody(_Strict):
    state: dict[str, Any] = Field(
        description="Tensors by the names of State.to_dict(): {'layers.0.h': [[...]], ...}, one row, normalised units."
    )
    seq: int | None = Field(default=None, ge=0, le=MAX_SEQ, description="The stream's seq from now (default: kept).")
    version: int | None = Field(default=None, ge=0, description="Apply only if the stored version is this one.")
    _integral = field_validator("seq", "version", mode="before")(_integral)


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
        "version_conflict, conflict, too_large, unsupported_media_type, nonfinite, store_unavailable, store_busy."
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


def _refusal(o: Outcome) -> dict[str, Any]:
    """The JSON body of a refused outcome: detail, error code and, for a gap, the expected seq."""
    body: dict[str, Any] = {"detail": o.detail, "error": o.error}
    if o.expected_seq is not None:
        body["expected_seq"] = o.expected_seq
    return body


def _outcome_response(o: Outcome) -> Response:
    if o.status == 200:
        return _answer_json(o.answer, {"X-Hiddenstate-Replayed": "true"} if o.replayed else None)
    return _json(_refusal(o), o.status, _retry_after(error_for_code(o.error)))


def _retry_after(cls: type[HiddenStateError] | None) -> dict[str, str] | None:
    """``Retry-After`` for an error a client should simply try again (the store is down or busy)."""
    if cls is not None and issubclass(cls, StoreUnavailableError):
        return {"Retry-After": str(cls.retry_after)}
    return None


def _bulk_part(stream_id: str, o: Outcome) -> dict[str, Any]:
    if o.status == 200:
        return {"status": 200, **(o.answer or {})}
    return {"id": stream_id, "status": o.status, **_refusal(o)}


def _twice(stream_id: str) -> dict[str, Any]:
    detail = f"stream {stream_id!r} appears twice in one request; send its rows in one item"
    return _bulk_part(stream_id, Outcome.refusal(ShapeError(detail)))


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
        responses=_errors(400, 409, 413, 415, 422),
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
        responses=_errors(400, 413, 415, 422),
        openapi_extra=_body_doc(BulkBody),
        summary="Advance many streams in one request; each item gets its own status",
    )
    async def observe_bulk(request: Request) -> Response:
        body = await parse_body(request, BulkBody)
        check_bulk(service.limits, len(body.streams), sum(len(i.values) for i in body.streams))
        # A stream's second item is refused on its own (JSON Schema cannot say "unique by id").
        first = {i.id: k for k, i in reversed(list(enumerate(body.streams)))}
        unique = [i for k, i in enumerate(body.streams) if first[i.id] == k]
        items = service.observations([(i.id, i.seq, i.values, i.horizon) for i in unique])
        outcomes = iter(await service.observe(items))
        results = [
            _bulk_part(i.id, next(outcomes)) if first[i.id] == k else _twice(i.id) for k, i in enumerate(body.streams)
        ]
        if len(results) > 100:  # a large answer is encoded off the event loop, which serves every stream
            return await asyncio.to_thread(_answer_json, {"results": results})
        return _answer_json({"results": results})

    @app.post(
        "/v1/streams/{stream_id}/forecast",
        response_model=ForecastAnswer,
        responses=_errors(400, 404, 409, 413, 415, 422),
        openapi_extra=_body_doc(ForecastBody),
        summary="Forecast from the stored state without changing it",
    )
    async def forecast(stream_id: StreamId, request: Request) -> Response:
        body = await parse_body(request, ForecastBody)
        answer = await service.forecast(stream_id, body.horizon, body.quantiles, body.samples, body.seed)
        return await asyncio.to_thread(_json, answer)  # up to max_forecast_values numbers: off the event loop

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
        responses=_errors(400, 409, 413, 415, 422),
        openapi_extra=_body_doc(PutStateBody),
        summary="Replace the stream's state, validated like State.from_dict",
    )
    async def put_state(stream_id: StreamId, request: Request) -> Response:
        body = await parse_body(request, PutStateBody)
        _rows_as_documented(body.state)
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

    @app.get(
        "/healthz",
        summary="200 when the store answers, 503 when it is down; the store's durability either way",
        responses=_errors(503),
    )
    async def healthz() -> Response:
        try:
            await service.ping()
        except StoreUnavailableError as e:
            body = {"status": "unavailable", "store": "down", "detail": str(e), "error": e.code}
            return _json({**body, "durability": service.durability_report()}, e.http_status, _retry_after(type(e)))
        return _json({"status": "ok", "store": "up", "durability": service.durability_report()})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        try:
            streams = await service.count()
        except StoreUnavailableError:  # the outage is what /metrics should report: the last count stands
            streams = None
        text = service.metrics.render(
            streams=streams,
            info={"fingerprint": service.served.spec.fingerprint(), "version": __version__},
        )
        text += _durability_lines(service.durability_report())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyLimit, service=service)
    _document_bodies(app, service)
    _allow_on_405(app)
    return app


def _durability_lines(report: dict[str, Any]) -> str:
    """The store's durability as a Prometheus gauge: 1 when an acknowledged write survives a power cut."""

    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    labels = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(report.items()) if k != "durable")
    return (
        "# HELP hiddenstate_store_durable 1 when an acknowledged update survives a crash of the machine; "
        "mode is the --durability flag.\n"
        "# TYPE hiddenstate_store_durable gauge\n"
        f"hiddenstate_store_durable{{{labels}}} {int(bool(report.get('durable')))}\n"
    )


BODIES = (ObserveBody, BulkBody, ForecastBody, PutStateBody)


async def parse_body(request: Request, model: type[_M]) -> _M:
    """The request body validated as ``model`` by pydantic's own JSON parser, straight from the bytes.

    Faster than ``json.loads`` then validation, and NaN/Infinity tokens reach the validator,
    which refuses them (``allow_inf_nan=False``). Errors become a RequestValidationError.
    """
    check_media_type(request.headers.get("content-type"))
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def check_media_type(header: str | None) -> None:
    """Refuse a body whose Content-Type is not JSON: ``application/json`` or ``*/*+json``, any
    parameters (``charset``) aside. A missing header is read as JSON, as FastAPI reads it. A form
    or ``text/plain`` post, which a web page can send across origins without asking, is refused."""
    if header is None:
        return
    media = header.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaTypeError(f"content-type {header[:100]!r} is not JSON; send the body as application/json")


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _document_bodies(app: FastAPI, service: Service) -> None:
    """Put the request models (parsed by :func:`parse_body`, not by FastAPI) into the OpenAPI
    components, with every constraint the service enforces for its model (see :func:`_contract`)."""
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
        _contract(found, schema["paths"], service)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _rows_as_documented(state: dict[str, Any]) -> None:
    """Refuse what the document rules out but ``State.from_dict`` (which broadcasts, and takes any
    tensor-like) would take: a tensor that is not a list of rows, or true/false among the numbers."""
    for name, value in state.items():
        if not isinstance(value, list):
            continue  # State.from_dict refuses it, naming the layer and tensor
        if not all(isinstance(row, list) for row in value):
            raise StateError(f"state {name!r}: expected one row as [[...]], got {json.dumps(value)[:80]}")
        if any(isinstance(v, bool) for row in value for v in row):
            raise StateError(f"state {name!r}: true and false are not numbers")


def _longest_horizon(service: Service) -> int:
    """The longest horizon the model forecasts within the limits (0: it cannot forecast)."""
    served, limit = service.served, service.limits.max_horizon
    direct = int(getattr(served.model, "horizon", 0) or 0)
    for horizon in dict.fromkeys((limit, min(direct, limit))):
        if horizon < 1:
            continue
        try:
            served.forecast_method(horizon)
        except HiddenStateError:
            continue
        return horizon
    return 0


def _contract(found: dict[str, Any], paths: dict[str, Any], service: Service) -> None:
    """The served model's constraints, written into the schemas: so that the document is the
    contract and a request that validates against it is one the server takes (seq and version
    aside, which depend on what the store holds; a 404 or 409 then says so).

    - a stream id matches its pattern and has 1 to 256 characters;
    - a row has exactly one number per input column, each within the range that stays finite
      in float32 once normalised;
    - a request brings at most ``max_steps`` rows per stream and ``max_streams`` streams;
    - a horizon is at most the longest the model forecasts within ``max_horizon``;
    - a state has exactly the model's tensors, each one row of its layer's width.

    A bulk request's rows, all streams together, its forecast values, a path forecast's values and
    the body's bytes have limits of their own (``max_total_steps``, ``max_forecast_values``,
    ``max_body_bytes``), given in the descriptions: JSON Schema cannot say them.
    """
    served, limits = service.served, service.limits
    found["BulkItem"]["properties"]["id"].update(minLength=1, maxLength=256)
    for path in paths.values():
        for operation in path.values():
            for parameter in operation.get("parameters", ()):
                if parameter["name"] == "stream_id":
                    parameter["schema"].update(minLength=1, maxLength=256)
    bound = served.input_bound
    number = {"type": "number", "minimum": -bound, "maximum": bound}
    row = {"type": "array", "items": number, "minItems": served.n_inputs, "maxItems": served.n_inputs}
    values = {
        "type": "array",
        "items": row,
        "minItems": 1,
        "maxItems": limits.max_steps,
        "title": "Values",
        "description": f"One row per step ({limits.max_steps} at most), one number per input column "
        f"({', '.join(served.inputs)}) in original units, each within ±{bound:.9g}.",
    }
    longest = _longest_horizon(service)
    steps = {"type": "integer", "minimum": 1, "maximum": longest} if longest else {"not": {}}
    for name in ("ObserveBody", "BulkItem"):
        props = found[name]["properties"]
        props["values"] = values
        props["horizon"] = {
            "anyOf": [steps, {"type": "null"}],
            "default": None,
            "title": "Horizon",
            "description": f"Also forecast this many steps (at most {longest})." if longest else "Not forecastable.",
        }
    bulk = found["BulkBody"]
    bulk["properties"]["streams"]["maxItems"] = limits.max_streams
    bulk["description"] = (
        f"At most {limits.max_streams} items and {limits.max_total_steps} rows in all, repeated items counted; "
        f"at most {limits.max_forecast_values} forecast values (horizon x targets, summed over the items); "
        f"a body of at most {limits.max_body_bytes} bytes."
    )
    found["ForecastBody"]["properties"]["horizon"] = {**steps, "title": "Horizon", "description": "Steps to forecast."}
    if service.served.likelihood is not None:
        found["ForecastBody"]["description"] = (
            f"Sample paths drawn (samples, or 100 for quantiles alone) x horizon x {served.n_targets} targets: "
            f"at most {limits.max_forecast_values}."
        )
    if service.served.likelihood is None:  # sample paths need a likelihood head: a point model takes none
        for name in ("quantiles", "samples", "seed"):
            found["ForecastBody"]["properties"].pop(name, None)
    finite32 = {"type": "number", "minimum": -_FLOAT32_FINITE, "maximum": _FLOAT32_FINITE}
    tensors = {
        name: {
            "type": "array",
            "items": {"type": "array", "items": finite32, "minItems": width, "maxItems": width},
            "minItems": 1,
            "maxItems": 1,
            "description": f"One row of {width} numbers, normalised units.",
        }
        for name, width in served.layout
    }
    state = found["PutStateBody"]["properties"]["state"]
    state.update(properties=tensors, required=list(tensors), additionalProperties=False)
    state["description"] = f"Every tensor of the model's state ({', '.join(tensors)}), one row each, normalised units."


def _allow_on_405(app: FastAPI) -> None:
    """A 405 names the methods the path takes in ``Allow`` (all its routes', not only the first one's)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            detail = f"no such path: {request.method} {request.url.path}"
            return _json({"detail": detail, "error": "not_found"}, 404)
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        methods: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        allow = ", ".join(sorted(methods))
        detail = f"method {request.method} is not allowed on {request.url.path}; it takes {allow}"
        return _json({"detail": detail, "error": "method_not_allowed"}, 405, {"Allow": allow})


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
        return _json({"detail": detail, "error": (MalformedRequestError if status == 400 else ShapeError).code}, status)

    @app.exception_handler(HiddenStateError)
    async def ours(request: Request, exc: HiddenStateError) -> Response:
        body: dict[str, Any] = {"detail": str(exc), "error": exc.code}
        if isinstance(exc, SequenceGapError):
            body["expected_seq"] = exc.expected
        return _json(body, exc.http_status, _retry_after(type(exc)))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> Response:
        error = MalformedRequestError("malformed JSON: nested too deeply")
        return _json({"detail": str(error), "error": error.code}, error.http_status)

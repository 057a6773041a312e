"""One table of errors: each class knows its HTTP status, its error code and its exit code, and
the service, the client and the command line read them from there."""

from __future__ import annotations

import inspect
import re

import httpx
import pytest
import typer
from typer.testing import CliRunner

from hiddenstate import errors
from hiddenstate.cli.group import OneLineErrors
from hiddenstate.errors import (
    HiddenStateError,
    RequestError,
    SequenceGapError,
    ServeError,
    StoreBusyError,
    StoreUnavailableError,
    StreamNotFoundError,
    VersionConflictError,
    error_for_code,
)
from hiddenstate.serve.client import Client

TABLE = {  # class: (http status, code, exit code), as docs/serving.md lists them
    "HiddenStateError": (500, "internal", 1),
    "StateError": (422, "invalid", 1),
    "ShapeError": (422, "invalid", 1),
    "ConfigError": (422, "invalid", 1),
    "DataError": (422, "invalid", 1),
    "ContinuityError": (422, "invalid", 1),
    "CheckpointError": (500, "checkpoint", 1),
    "MissingExtraError": (500, "missing_extra", 1),
    "ServeError": (409, "conflict", 1),
    "MalformedRequestError": (400, "malformed_json", 1),
    "BodyTooLargeError": (413, "too_large", 1),
    "UnsupportedMediaTypeError": (415, "unsupported_media_type", 1),
    "SequenceGapError": (409, "sequence_gap", 1),
    "ReplayConflictError": (409, "replay_conflict", 1),
    "NonFiniteError": (422, "nonfinite", 1),
    "StreamNotFoundError": (404, "not_found", 1),
    "VersionConflictError": (409, "version_conflict", 1),
    "StoreUnavailableError": (503, "store_unavailable", 1),
    "StoreBusyError": (503, "store_busy", 1),
    "RequestError": (409, "conflict", 1),
    "ExportError": (500, "export_failed", 1),
}


def test_every_error_class_is_in_the_table_with_its_status_code_and_exit_code() -> None:
    classes = {
        name: cls for name, cls in vars(errors).items() if inspect.isclass(cls) and issubclass(cls, HiddenStateError)
    }
    assert set(classes) == set(TABLE)
    for name, cls in classes.items():
        assert (cls.http_status, cls.code, cls.exit_code) == TABLE[name], name
        assert error_for_code(cls.code).code == cls.code, name  # type: ignore[union-attr]
    assert error_for_code("store_unavailable") is StoreUnavailableError
    assert error_for_code("no_such_code") is None


def test_the_module_docstring_draws_every_class_under_its_parent() -> None:
    drawn: dict[str, str | None] = {}  # class: the class it is drawn under
    parents: list[str] = []  # the open branch, one name per depth
    tree = (errors.__doc__ or "").split("::", 1)[1].split("\n\n")[1].splitlines()
    for k, line in enumerate(tree):
        if k and "──" not in line:
            continue  # a description running on
        found = re.match(r"[ │├└─]*([A-Z]\w+)", line)
        assert found, line
        depth = (line.index("──") - 4) // 4 + 1 if k else 0
        parents[depth:] = [found.group(1)]
        drawn[found.group(1)] = parents[depth - 1] if depth else None
    assert set(drawn) == set(TABLE)
    for name, parent in drawn.items():
        base = next((b for b in getattr(errors, name).__bases__ if issubclass(b, HiddenStateError)), None)
        assert (base.__name__ if base else None) == parent, name


class TeapotError(ServeError):
    http_status, code, exit_code = 418, "teapot", 3


def test_the_command_line_exits_with_the_class_exit_code() -> None:
    app = typer.Typer(cls=OneLineErrors, add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def brew() -> None:
        raise TeapotError("short and stout")

    @app.command()
    def serve_down() -> None:
        raise StoreUnavailableError("redis://h:1/0", "Error 111 connecting to h:1. Connection refused.")

    runner = CliRunner()
    teapot = runner.invoke(app, ["brew"])
    assert teapot.exit_code == 3 and teapot.stderr == "Error: short and stout\n"
    down = runner.invoke(app, ["serve-down"])
    assert down.exit_code == 1
    assert down.stderr == (
        "Error: the state store redis://h:1/0 is unavailable: Error 111 connecting to h:1. Connection refused.\n"
    )


def _client(status: int, body: dict[str, object]) -> Client:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    return Client("http://service", http=httpx.Client(transport=transport))


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (409, {"error": "sequence_gap", "detail": "x", "expected_seq": 4}, SequenceGapError),
        (404, {"error": "not_found", "detail": "x"}, StreamNotFoundError),
        (409, {"error": "version_conflict", "detail": "x"}, VersionConflictError),
        (503, {"error": "store_unavailable", "detail": "the state store s is unavailable: down"}, RequestError),
        (418, {"error": "teapot", "detail": "short and stout"}, RequestError),
    ],
)
def test_the_client_turns_each_code_into_its_class(status: int, body: dict[str, object], raised: type) -> None:
    with _client(status, body) as client, pytest.raises(raised) as e:
        client.observe("s", 9, [[1.0, 2.0]])
    assert type(e.value) is raised
    if raised is SequenceGapError:
        assert (e.value.expected, e.value.got) == (4, 9)  # type: ignore[attr-defined]
    if raised is RequestError:
        assert e.value.status == status and e.value.error == body["error"]  # type: ignore[attr-defined]
        assert e.value.kind is error_for_code(str(body["error"]))  # type: ignore[attr-defined]


def test_store_busy_is_a_store_unavailable_error() -> None:
    busy = StoreBusyError("sqlite://s.db", "stream 'a': lost 3 times")
    assert isinstance(busy, StoreUnavailableError) and busy.retry_after == 1
    assert str(busy) == "the state store sqlite://s.db is unavailable: stream 'a': lost 3 times"

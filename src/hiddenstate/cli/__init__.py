"""The ``hiddenstate`` command line: a typer app, thin over the library.

Install it with ``pip install 'hiddenstate[cli]'``; without that extra, ``hiddenstate`` says so in
one line and exits with code 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hiddenstate._extras import require
from hiddenstate.errors import MissingExtraError

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (the ``hiddenstate`` console script)."""
    try:
        for package in ("typer", "rich"):
            require(package, "cli")
    except MissingExtraError as e:
        print(f"hiddenstate: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    from hiddenstate.cli.commands import main as run

    run(argv)


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, built on first use
        require("typer", "cli")
        from hiddenstate.cli.commands import app

        return app
    raise AttributeError(f"module 'hiddenstate.cli' has no attribute {name!r}")

"""The ``hiddenstate`` command line: a typer app, thin over the library.

Install it with ``pip install 'hiddenstate[cli]'``.
"""

from __future__ import annotations

from hiddenstate.cli.commands import app, main

__all__ = ["app", "main"]

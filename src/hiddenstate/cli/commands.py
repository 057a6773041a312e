"""The ``hiddenstate`` command line: train, evaluate, forecast, plot and inspect runs.

Thin by design: it parses, calls the library (mostly :mod:`hiddenstate.cli.pipeline`), prints. One
``app`` (:mod:`hiddenstate.cli.root`) holds every command: ``train`` (:mod:`.train`), the commands
on a saved run (:mod:`.runs`), and those of subsystems, added through a ``register(app)``
function named in :data:`LAZY_COMMANDS` and imported only when that command is used (``serve``,
``benchmark``, ...).

Exit codes: 0 success; 2 a usage error (a bad flag or value), as one line on stderr; 1 any
other error hiddenstate raises (bad data, a damaged run directory, ...), as one line on stderr
with no traceback. The root group that does both lives in :mod:`hiddenstate.cli.group`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hiddenstate.cli import runs as _runs  # noqa: F401 - registers evaluate, forecast, plot, inspect
from hiddenstate.cli import train as _train  # noqa: F401 - registers train
from hiddenstate.cli.group import LAZY_COMMANDS as LAZY_COMMANDS  # the same dict: an entry added here is a command
from hiddenstate.cli.pipeline import load_data as load_data  # re-exported: hiddenstate.cli.load_data predates pipeline
from hiddenstate.cli.root import app

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """The console script ``hiddenstate``."""
    app(args=list(argv) if argv is not None else None, prog_name="hiddenstate")


if __name__ == "__main__":
    main()

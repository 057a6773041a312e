"""The root group of the ``hiddenstate`` command line: one-line errors and commands loaded on use.

:class:`OneLineErrors` turns every failure into one line on stderr and an exit code: 2 for a
usage error (a bad flag or value), the ``exit_code`` of :mod:`hiddenstate.errors`' table for
an error hiddenstate raises (1: bad data, a damaged run directory, ...), 1 for a failed file
operation, 130 when interrupted; never a traceback. It also
lists and loads the commands of :data:`LAZY_COMMANDS`, which live with their subsystems.
:mod:`hiddenstate.cli.commands` builds its ``app`` on it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click; its exceptions are the ones raised
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

from hiddenstate.errors import HiddenStateError

__all__ = ["LAZY_COMMANDS", "OneLineErrors"]

#: Commands that live with their subsystems, each module offering ``register(app)``. They load
#: on first use, so ``hiddenstate train`` does not import the web service.
LAZY_COMMANDS = {
    "serve": "hiddenstate.serve.command",
    "benchmark": "hiddenstate.ett.benchmark",
    "import": "hiddenstate.cli.imports",
    "export": "hiddenstate.cli.export",
}


def _lazy_command(name: str) -> Any:
    """The command ``name`` built by its module's ``register``, or None when it cannot be loaded."""
    import importlib

    try:
        module = importlib.import_module(LAZY_COMMANDS[name])
    except ImportError as e:
        typer.echo(f"Warning: command {name!r} is unavailable: {e}", err=True)
        return None
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    module.register(holder)
    return typer.main.get_group(holder).commands.get(name)


class OneLineErrors(TyperGroup):
    """The root group: one-line errors (usage errors exit 2, hiddenstate errors exit 1) and the
    lazily loaded commands of :data:`LAZY_COMMANDS`."""

    def list_commands(self, ctx: Any) -> list[str]:
        own = list(super().list_commands(ctx))
        return own + [name for name in LAZY_COMMANDS if name not in own]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            command = _lazy_command(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return command

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        standalone = extra.pop("standalone_mode", True)
        code = 0
        with warnings.catch_warnings():
            warnings.filterwarnings("default", category=UserWarning)  # ours, for the user: shown, once
            warnings.showwarning = _one_line_warning
            code = self._main(args, prog_name, extra)
        if standalone:
            sys.exit(code)
        return code

    def _main(self, args: Sequence[str] | None, prog_name: str | None, extra: dict[str, Any]) -> int:
        code = 0
        try:
            rv = super().main(args=args, prog_name=prog_name or "hiddenstate", standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
            if code == 130:  # typer turns Ctrl-C into exit 130 itself, saying nothing
                code = _fail("interrupted (a training run continues with --resume)", 130)
        except click_errors.NoArgsIsHelpError as e:
            # building the error rendered the help (rich prints it at once; plain click returns it)
            if e.format_message().strip():
                typer.echo(e.format_message())
            code = 2  # a command is missing: a usage error, as in click >= 8.2
        except click_errors.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            code = _fail(f"{e.format_message()}{where}", 2)
        except click_errors.ClickException as e:
            code = _fail(e.format_message(), e.exit_code)
        except typer.Abort:
            code = _fail("aborted", 1)
        except HiddenStateError as e:
            code = _fail(str(e), e.exit_code)  # the errors table: 1 for all of ours (2 is click's usage errors)
        except OSError as e:
            code = _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), 1)
        except KeyboardInterrupt:
            code = _fail("interrupted (a training run continues with --resume)", 130)
        return code


def _one_line_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """A warning on the command line: one line on stderr, without the source file and line."""
    sys.stderr.write(f"warning: {' '.join(str(message).split())}\n")


def _fail(message: str, code: int) -> int:
    text = " ".join(str(message).split()).replace("Value error, ", "")  # pydantic's prefix, via typer
    if os.environ.get("WORLD_SIZE") and os.environ.get("RANK"):  # under torchrun: which rank failed
        text = f"rank {os.environ['RANK']}: {text}"
        from hiddenstate.distributed import mark_failed

        mark_failed()  # at exit, leave the group at once: the other ranks may be waiting for this one
    typer.echo(f"Error: {text}", err=True)
    return code

"""The root of the ``hiddenstate`` command line: the typer ``app``, its choices and the parsing
helpers every command shares.

The choices of each flag are the library's own tuples (``POLICIES``, ``LOSSES``, ``CELLS``, ...),
declared once where the concept lives; the defaults of ``train``'s data and model flags are
:class:`~hiddenstate.cli.settings.RunSettings`'s.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer
from rich.console import Console

from hiddenstate.cli.group import OneLineErrors
from hiddenstate.data.frames import LAYOUTS
from hiddenstate.forecast import METHODS
from hiddenstate.likelihood import LIKELIHOODS
from hiddenstate.state import CELLS, LayerSpec
from hiddenstate.train.config import BACKENDS, LOSSES, POLICIES, PRECISIONS

__all__ = [
    "Backend",
    "Cell",
    "Layout",
    "Likelihood",
    "Loss",
    "Method",
    "Policy",
    "Precision",
    "app",
    "fractions",
    "names",
    "new_console",
    "parse_layers",
]

# Literal[tuple] is Literal of the tuple's items: typer offers them as the flag's choices.
Cell = Literal[CELLS]  # type: ignore[valid-type]
# "batch" needs a data source that brings each batch's state, which the command line has not
Policy = Literal[tuple(p for p in POLICIES if p != "batch")]  # type: ignore[valid-type]
Method = Literal[METHODS]  # type: ignore[valid-type]
Layout = Literal[LAYOUTS]  # type: ignore[valid-type]
Loss = Literal[LOSSES]  # type: ignore[valid-type]
# The command line standardises every column, which a count model cannot read: negbin is for the
# Python API (hs.Forecaster scales each series by its mean, as DeepAR does).
CLI_LIKELIHOODS = tuple(n for n in LIKELIHOODS if n != "negbin")
Likelihood = Literal[CLI_LIKELIHOODS]  # type: ignore[valid-type]
Backend = Literal[BACKENDS]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]


app = typer.Typer(
    name="hiddenstate",
    cls=OneLineErrors,
    help="Stateful LSTM/GRU forecasting whose hidden state you can set, read, carry and save.",
    epilog=(
        "Start here: [bold]hiddenstate train --out runs/demo[/bold] trains on built-in data in about 10 seconds.\n\n"
        "Each command has examples in its [bold]--help[/bold]."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from hiddenstate import __version__

        typer.echo(f"hiddenstate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Stateful LSTM/GRU forecasting whose hidden state you can set, read, carry and save."""


def new_console() -> Console:
    # soft_wrap: long lines (paths) stay whole in pipes and logs; tables still fit the width
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


# -- parsing helpers ----------------------------------------------------------------------------


def names(value: str | None, flag: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    found = tuple(v.strip() for v in value.split(",") if v.strip())
    if not found:
        raise typer.BadParameter(f"expected comma-separated column names, got {value!r}", param_hint=flag)
    twice = sorted({v for v in found if found.count(v) > 1})
    if twice:
        raise typer.BadParameter(f"{', '.join(map(repr, twice))} named twice in {value!r}", param_hint=flag)
    return found


def parse_layers(value: str, cell: str, flag: str = "--hidden") -> list[LayerSpec]:
    """``"64,32"`` (with ``cell``) or ``"lstm:64,gru:32"`` into LayerSpecs; BadParameter otherwise."""
    layers = []
    for item in value.split(","):
        kind, _, size = item.strip().rpartition(":")
        kind = kind.strip().lower() or cell
        if not size.strip().isdigit() or int(size) < 1 or kind not in CELLS:
            raise typer.BadParameter(
                f"expected comma-separated hidden sizes like 64,32 (or cell:size like lstm:64,gru:32), got {value!r}",
                param_hint=flag,
            )
        layers.append(LayerSpec(kind, int(size)))
    return layers


def fractions(value: str) -> tuple[float, ...] | str:
    if value.strip().lower() == "ett":
        return "ett"
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) > 1 + 1e-9 or parts[2] == 0:
        raise typer.BadParameter(
            f"expected train,val,test fractions like 0.7,0.1,0.2 (test > 0, sum <= 1) or 'ett', got {value!r}",
            param_hint="--split",
        )
    return tuple(parts)

"""``hiddenstate import keras MODEL.keras --out RUN_DIR``: a Keras model as a run directory.

The run directory then works like any other: ``inspect``, ``serve``, export, and fine-tuning with
``hs.Trainer`` from ``hs.load_run``. Its manifest records the source file and its sha256 under
``extra.source``. There is no scaler unless ``--scaler`` gives one (a StandardScaler's JSON).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from hiddenstate.errors import ConfigError, DataError

__all__ = ["import_keras", "register"]

EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  hiddenstate import keras model.keras --out runs/from-keras\n"
    "  hiddenstate import keras model.h5 --out runs/k --inputs OT,HUFL --targets OT"
)


def _columns(value: str | None, default: str, count: int, what: str) -> list[str]:
    if value is None:
        return [f"{default}{i}" for i in range(count)]
    cols = [c.strip() for c in value.split(",") if c.strip()]
    if len(cols) != count:
        raise ConfigError(f"--{what}: {len(cols)} names given for a model with {count} {what}")
    return cols


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_keras(
    model_file: Annotated[Path, typer.Argument(help="A Keras .keras or .h5 model file.")],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write.")],
    inputs: Annotated[str | None, typer.Option(help="Comma-separated input column names (default x0,x1,...).")] = None,
    targets: Annotated[
        str | None, typer.Option(help="Comma-separated target column names (default y0,y1,...).")
    ] = None,
    scaler: Annotated[Path | None, typer.Option(help="A StandardScaler JSON file over the inputs.")] = None,
) -> None:
    """Import a Keras model file (read with h5py; no Keras code runs) as a run directory."""
    from hiddenstate.interop.keras import load
    from hiddenstate.runs.run import save_run

    model = load(model_file)
    input_names = _columns(inputs, "x", model.input_size, "inputs")
    target_names = _columns(targets, "y", model.output_size, "targets")
    fitted = None
    if scaler is not None:
        from hiddenstate.data.scaling import StandardScaler

        try:
            fitted = StandardScaler.from_json(json.loads(scaler.read_text()))
        except (OSError, ValueError) as e:
            raise DataError(f"{scaler}: not a scaler JSON file ({e})") from None
    source = {"format": "keras", "file": str(model_file.resolve()), "sha256": _sha256(model_file)}
    save_run(out, model, scaler=fitted, inputs=input_names, targets=target_names, extra={"source": source})
    layers = ", ".join(f"{ls.cell}:{ls.hidden_size}" for ls in model.state_spec.layers)
    typer.echo(f"imported {model_file} ({layers}) -> {out}")


def register(app: typer.Typer) -> None:
    """Add the ``import`` group with its ``keras`` command to ``app``."""
    group = typer.Typer(help="Bring models from other libraries in as run directories.", no_args_is_help=True)
    group.command("keras", epilog=EPILOG)(import_keras)
    app.add_typer(group, name="import")

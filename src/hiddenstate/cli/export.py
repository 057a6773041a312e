"""``hiddenstate export RUN_DIR --out DIR``: a run as an ONNX file, or as a Triton model repository.

:func:`register` adds the command to a typer app; the root group loads it on first use
(``LAZY_COMMANDS`` in :mod:`hiddenstate.cli.group`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["register"]

FORMATS = ("onnx",)

EXPORT_EPILOG = """\
[bold]Examples[/bold]

  hiddenstate export runs/demo --out exported
  hiddenstate export runs/demo --out models --triton --name demo
  hiddenstate export runs/demo --out exported --units normalised --opset 18
"""


def register(app: Any) -> None:
    """Add ``export`` to a Typer app (the CLI calls this)."""
    import typer

    @app.command("export", epilog=EXPORT_EPILOG)
    def export_command(
        run_dir: Path = typer.Argument(..., help="a run directory written by 'hiddenstate train'"),  # noqa: B008
        out: Path = typer.Option(..., "--out", help="folder to write into (created when missing)"),  # noqa: B008
        format: str = typer.Option("onnx", "--format", help="export format: onnx"),
        units: str = typer.Option("original", "--units", help="original (scalers folded in) | normalised"),
        triton: bool = typer.Option(False, "--triton", help="write a Triton model repository entry"),
        name: str | None = typer.Option(None, "--name", help="Triton model name (default: the run folder's name)"),
        opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default 17)"),
    ) -> None:
        """Export a run with its state as explicit graph inputs and outputs, checked in onnxruntime."""
        if format not in FORMATS:
            raise typer.BadParameter(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
        if units not in ("original", "normalised"):
            raise typer.BadParameter(f"--units {units!r}: expected original or normalised")
        if name is not None and not triton:
            raise typer.BadParameter("--name names the Triton model; add --triton")
        from hiddenstate.errors import CheckpointError, ConfigError
        from hiddenstate.interop.onnx import check_opset
        from hiddenstate.interop.triton import check_model_name
        from hiddenstate.runs.run import load_run

        for flag, check, value in (("--opset", check_opset, opset), ("--name", check_model_name, name)):
            try:
                if value is not None:
                    check(value)
            except ConfigError as e:  # a usage error (exit 2), found before the run is loaded
                raise typer.BadParameter(str(e), param_hint=flag) from None
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: the output folder is a file")
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: run directory not found")
        run = load_run(run_dir)
        if triton:
            from hiddenstate.interop.triton import write_triton_repository

            model_name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name).lstrip(".-") or "hiddenstate"
            report = write_triton_repository(run, out, model_name, units=units, opset=opset)
            typer.echo(f"wrote {out / model_name}/config.pbtxt and {report.path}")
        else:
            from hiddenstate.interop.onnx import export_onnx

            report = export_onnx(run, out / "model.onnx", opset=opset, units=units)
            typer.echo(f"wrote {report.path}")
        chunks = ", ".join(str(c) for c in report.checks[0]["chunks"]) if report.checks else ""
        typer.echo(f"opset {report.opset}, units {report.units}; onnxruntime vs the model in chunks of {chunks} steps:")
        for check in report.checks:
            typer.echo(f"  batch {check['batch']}: max |diff| {check['max_abs_diff']:.2e}")
        for tensor, diff in report.max_abs_diff.items():
            typer.echo(f"  {tensor}: {diff:.2e}")

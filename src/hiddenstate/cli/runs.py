"""Commands on a saved run: ``evaluate``, ``forecast``, ``plot`` and ``inspect``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hiddenstate.cli import pipeline
from hiddenstate.cli.output import lane_table, report, spec_table
from hiddenstate.cli.pipeline import write_plots
from hiddenstate.cli.root import Method, app, new_console, parse_layers
from hiddenstate.state import StateSpec

__all__ = ["evaluate", "forecast", "inspect", "plot"]


#: The longest ``forecast --horizon``: the CSV is built in memory (100,000 steps of one series and
#: two targets is about 300 MB), and a rollout that long has long stopped meaning anything.
MAX_FORECAST_STEPS = 100_000

EVALUATE_EPILOG = """\
[bold]Examples[/bold]

  hiddenstate evaluate runs/demo
  hiddenstate evaluate runs/ett ../shared/data/ett/ETTm1.csv --horizon 24 --method rollout
"""


@app.command(epilog=EVALUATE_EPILOG)
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `hiddenstate train`.")],
    data: Annotated[Path | None, typer.Argument(help="Data file (default: the data the run was trained on).")] = None,
    horizon: Annotated[int | None, typer.Option(min=1, help="Forecast horizon (default: the run's).")] = None,
    method: Annotated[Method, typer.Option(help="Forecast method.")] = "auto",
) -> None:
    """Score a run's forecasts on the test split, next to the repeat-last-value baseline."""
    run, settings, dataset = pipeline.load(run_dir, data, {})
    report(new_console(), run, dataset, settings, horizon or settings.horizon, method)


FORECAST_EPILOG = """\
[bold]Examples[/bold]

  [dim]# the next day after the end of the training data, as CSV on stdout[/dim]
  hiddenstate forecast runs/demo --horizon 96
  hiddenstate forecast runs/ett new.csv --horizon 24 --out forecast.csv
"""


@app.command(epilog=FORECAST_EPILOG)
def forecast(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `hiddenstate train`.")],
    data: Annotated[
        Path | None, typer.Argument(help="History file (default: the data the run was trained on).")
    ] = None,
    horizon: Annotated[
        int, typer.Option(min=1, max=MAX_FORECAST_STEPS, help="Steps to forecast after the end of each series.")
    ] = 96,
    method: Annotated[Method, typer.Option(help="Forecast method.")] = "auto",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV file to write (default: stdout).")] = None,
) -> None:
    """Forecast past the end of every series, as CSV: unique_id, step, ds (if timed), one column per target.

    The state is warmed through each whole series, then the horizon comes from the model.
    """
    from hiddenstate.runs.run import atomic_write

    run, settings, dataset = pipeline.load(run_dir, data, {})
    text = pipeline.forecast_csv(run, dataset, settings, horizon, method)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write(out, text.encode())
        new_console().print(
            f"wrote {escape(str(out))}: {horizon} steps × {dataset.num_series} series of {', '.join(run.targets)}"
        )


@app.command(
    epilog="[bold]Examples[/bold]\n\n  hiddenstate plot runs/demo\n  hiddenstate plot runs/ett --out-dir figures"
)
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `hiddenstate train`.")],
    data: Annotated[Path | None, typer.Argument(help="Data file (default: the data the run was trained on).")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Where to write the PNGs (default: RUN_DIR).")
    ] = None,
    horizon: Annotated[int | None, typer.Option(min=1, help="Forecast horizon (default: the run's).")] = None,
    method: Annotated[Method, typer.Option(help="Forecast method.")] = "auto",
    steps: Annotated[int, typer.Option(min=2, help="Steps of the series shown in states.png.")] = 384,
) -> None:
    """Draw forecast.png (forecast vs truth on the test split) and states.png (h and c over time)."""
    run, settings, dataset = pipeline.load(run_dir, data, {"plot_steps": steps})
    evaluation = pipeline.evaluate(run, dataset, settings, horizon or settings.horizon, method)
    target = out_dir or run_dir
    target.mkdir(parents=True, exist_ok=True)
    paths = write_plots(run, dataset, settings, evaluation, target)
    new_console().print("wrote " + escape(", ".join(str(p) for p in paths)))


INSPECT_EPILOG = """\
[bold]Examples[/bold]

  hiddenstate inspect runs/demo
  hiddenstate inspect --spec lstm:64,lstm:32
"""


@app.command(epilog=INSPECT_EPILOG)
def inspect(
    run_dir: Annotated[Path | None, typer.Argument(help="A run directory written by `hiddenstate train`.")] = None,
    spec: Annotated[
        str | None, typer.Option("--spec", help="A state spec instead of a run, e.g. lstm:64,gru:32.")
    ] = None,
    lanes: Annotated[int, typer.Option(min=1, help="Show at most this many lanes.")] = 16,
) -> None:
    """Print the state spec and, for a run, the carried state of each training lane (h/c per layer)."""
    if (run_dir is None) == (spec is None):
        raise typer.BadParameter("give a RUN_DIR or --spec, not both and not neither", param_hint="RUN_DIR")
    console = new_console()
    if spec is not None:
        console.print(spec_table(StateSpec(parse_layers(spec, "lstm", "--spec"))))
        return
    from hiddenstate.runs.run import load_run

    assert run_dir is not None
    run = load_run(run_dir)
    console.print(spec_table(run.spec))
    console.print(
        f"[bold]run[/] {escape(str(run.path))}: inputs {escape(', '.join(run.inputs))} → "
        f"targets {escape(', '.join(run.targets))}; "
        f"model {run.manifest.get('model', {}).get('kind')}, version {run.manifest.get('version')}"
    )
    if run.lane_state is None:
        console.print("no carried lane state in this run")
        return
    console.print(lane_table(run.lane_state, lanes))

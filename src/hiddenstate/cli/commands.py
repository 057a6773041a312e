"""The ``hiddenstate`` command line: train, evaluate, forecast, plot and inspect runs.

Thin by design: it parses, calls the library (mostly :mod:`hiddenstate.cli.pipeline`), prints. One
``app`` (a typer app) holds every command; subsystems add theirs through a ``register(app)``
function named in :data:`LAZY_COMMANDS`, imported only when that command is used (``serve``,
``benchmark``).

Exit codes: 0 success; 2 a usage error (a bad flag or value), as one line on stderr; 1 any
other error hiddenstate raises (bad data, a damaged run directory, ...), as one line on stderr
with no traceback. The root group that does both lives in :mod:`hiddenstate.cli.group`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

try:  # typer >= 0.2x vendors its own click
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.core import ParameterSource  # type: ignore[no-redef,assignment]

from hiddenstate.cli import pipeline
from hiddenstate.cli.group import LAZY_COMMANDS as LAZY_COMMANDS  # the same dict: an entry added here is a command
from hiddenstate.cli.group import OneLineErrors
from hiddenstate.cli.pipeline import ARGS_FILE, write_plots
from hiddenstate.cli.pipeline import load_data as load_data  # re-exported: hiddenstate.cli.load_data predates pipeline
from hiddenstate.state import LayerSpec, StateSpec

__all__ = ["app", "main"]

Cell = Literal["lstm", "gru", "rnn"]
Policy = Literal["carry", "encode", "carry+encode", "zeros"]
Method = Literal["auto", "rollout", "direct"]
Layout = Literal["auto", "wide", "long"]
Loss = Literal["mse", "mae", "huber"]
Likelihood = Literal["studentt", "normal", "negbin"]
Backend = Literal["torch", "fused"]
Precision = Literal["fp32", "bf16", "fp16"]
CELLS = ("lstm", "gru", "rnn")
# flags that may change when a run is resumed; every other explicit flag must match the run
RESUMABLE = {"epochs", "threads", "device", "backend", "precision", "plots", "method", "out", "resume", "patience"}


app = typer.Typer(
    name="hiddenstate",
    cls=OneLineErrors,
    help="Stateful LSTM/GRU forecasting whose hidden state you can set, read, carry and save.",
    epilog=(
        "Start here: [bold]hiddenstate train --out runs/demo[/bold] trains on built-in data in about a minute.\n\n"
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


def _console() -> Console:
    # soft_wrap: long lines (paths) stay whole in pipes and logs; tables still fit the width
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


# -- parsing helpers ----------------------------------------------------------------------------


def _names(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise typer.BadParameter(f"expected comma-separated column names, got {value!r}", param_hint=flag)
    return names


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


def _fractions(value: str) -> list[float] | str:
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
    return parts


# -- printing results ---------------------------------------------------------------------------


def _metrics_table(results: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("forecast")
    for scale in ("normalised", "original"):
        for m in ("MSE", "MAE", "RMSE"):
            table.add_column(f"{m}\n{scale}", justify="right")
    for name, scales in results.items():
        cells = [f"{scales[s][m]:.4g}" for s in ("normalised", "original") for m in ("mse", "mae", "rmse")]
        table.add_row(name, *cells)
    return table


def report(console: Console, run: Any, dataset: Any, settings: dict[str, Any], horizon: int, method: str) -> Any:
    """Evaluate on the test split, print model vs repeat-last, return the chosen method's Evaluation."""
    evals = pipeline.evaluate_methods(run, dataset, settings, horizon, method)
    main = next(iter(evals.values()))
    rows = {f"model ({e.method})": e.model for e in evals.values()}
    rows["repeat last value"] = main.baseline
    how = (
        "state carried through each series"
        if settings.get("state_policy") in ("carry", "carry+encode", None)
        else (f"state warmed over the last {settings.get('steps')} steps")
    )
    console.print(_metrics_table(rows, f"Test split: {horizon}-step forecasts from {main.origins} origins ({how})"))
    base, got = main.baseline["normalised"]["mse"], main.model["normalised"]["mse"]
    ratio = base / got if got > 0 else float("inf")
    if main.beats_baseline:
        console.print(
            f"[bold green]✓ The model beats the repeat-last baseline[/]: test MSE {got:.4g} vs {base:.4g} "
            f"(normalised), {ratio:.1f}× lower."
        )
    else:
        console.print(
            f"[bold red]✗ The model does NOT beat the repeat-last baseline[/]: test MSE {got:.4g} vs {base:.4g} "
            "(normalised). Train longer (--epochs) or check the data."
        )
    return main


# -- commands -----------------------------------------------------------------------------------

TRAIN_EPILOG = """\
[bold]Examples[/bold]

  [dim]# built-in synthetic data (2 variables, daily + weekly cycles): about a minute on 2 cores[/dim]
  hiddenstate train --out runs/demo

  [dim]# continue that run up to 30 epochs[/dim]
  hiddenstate train --out runs/demo --resume --epochs 30

  [dim]# a wide CSV like ETT, forecasting OT from every column, on ETT's standard split[/dim]
  hiddenstate train ../shared/data/ett/ETTm1.csv --time-col date --targets OT --split ett --out runs/ett

  [dim]# a long Parquet file (unique_id, ds, y), GRU cells, state set from the previous values[/dim]
  hiddenstate train sales.parquet --cell gru --state-policy carry+encode --out runs/sales
"""


@app.command(epilog=TRAIN_EPILOG)
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Argument(help="CSV or Parquet file (wide or long); omit for built-in data.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/run-YYYYmmdd-HHMMSS).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Train up to this many epochs (with --resume: in total).")] = 60,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Lanes: series pieces trained side by side.")
    ] = 16,
    steps: Annotated[int, typer.Option(min=1, help="Steps per chunk (truncated-BPTT window).")] = 48,
    hidden: Annotated[str, typer.Option(help="Hidden sizes per layer, e.g. 64,32 (or lstm:64,gru:32).")] = "32,32",
    cell: Annotated[Cell, typer.Option(help="Cell of every layer.")] = "lstm",
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate (Adam).")] = 3e-3,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; CPU runs are deterministic.")] = 0,
    state_policy: Annotated[
        Policy, typer.Option("--state-policy", help="Where each chunk's state comes from.")
    ] = "carry",
    time_col: Annotated[str | None, typer.Option("--time-col", help="Time column of a wide file (e.g. date).")] = None,
    id_col: Annotated[str, typer.Option("--id-col", help="Series id column of a long file.")] = "unique_id",
    ds_col: Annotated[str, typer.Option("--ds-col", help="Time column of a long file.")] = "ds",
    layout: Annotated[Layout, typer.Option(help="File layout.")] = "auto",
    ffill: Annotated[bool, typer.Option("--ffill", help="Forward-fill missing values instead of failing.")] = False,
    inputs: Annotated[str | None, typer.Option(help="Input columns, comma-separated (default: all).")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns, comma-separated (default: the inputs).")] = None,
    split: Annotated[
        str, typer.Option(help="Train, val, test fractions of each series, or 'ett' for ETT's standard borders.")
    ] = "0.7,0.1,0.2",
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout between layers.")] = 0.0,
    loss: Annotated[Loss, typer.Option(help="Training loss.")] = "mse",
    likelihood: Annotated[
        Likelihood | None,
        typer.Option(help="Train a likelihood head by its NLL instead of --loss (on the standardised data)."),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many epochs without a better val loss.")
    ] = None,
    horizon: Annotated[
        int, typer.Option(min=1, help="Forecast horizon for the test evaluation and the direct head.")
    ] = 96,
    method: Annotated[Method, typer.Option(help="Forecast method to evaluate.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out up to --epochs.")] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads (default: 1 for hidden sizes up to 32, else all cores).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[
        Backend, typer.Option(help="torch (cuDNN/oneDNN) or fused (a C kernel per LSTM layer; CPU, small models).")
    ] = "torch",
    precision: Annotated[Precision, typer.Option(help="fp32, or bf16/fp16 mixed precision on CUDA.")] = "fp32",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write forecast.png and states.png.")] = True,
    synthetic_steps: Annotated[int, typer.Option("--synthetic-steps", min=500, help="Rows of built-in data.")] = 5376,
) -> None:
    """Train a stateful model on a CSV/Parquet file (or built-in data), then evaluate and plot it.

    Prints test metrics next to a repeat-last-value baseline; writes weights and plots into the run.
    """
    from hiddenstate.runs.run import load_run

    console = _console()
    out = out if out is not None else Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    settings: dict[str, Any] = {
        "data": str(data) if data is not None else None,
        "time_col": time_col,
        "id_col": id_col,
        "ds_col": ds_col,
        "layout": layout,
        "fill": "ffill" if ffill else "error",
        "inputs": _names(inputs, "--inputs"),
        "targets": _names(targets, "--targets"),
        "split": _fractions(split),
        "synthetic_steps": synthetic_steps,
        "synthetic_seed": seed,
        "layers": StateSpec(parse_layers(hidden, cell)).to_json(),
        "dropout": dropout,
        "steps": steps,
        "batch_size": batch_size,
        "state_policy": state_policy,
        "horizon": horizon,
        "seed": seed,
        "lr": lr,
        "loss": loss,
        "likelihood": likelihood,
        "plot_steps": 4 * 96,
    }
    if resume:
        settings = _resume_settings(ctx, out, settings)
    elif pipeline.holds_run(out):
        raise typer.BadParameter(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out", param_hint="--out"
        )

    job = pipeline.prepare_training(
        settings,
        epochs=epochs,
        patience=patience,
        device=device,
        threads=threads,
        progress=sys.stderr.isatty(),
        backend=backend,
        precision=precision,
    )
    dataset, settings, model, config = job.dataset, job.settings, job.model, job.config
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"[bold]data[/] {escape(dataset.source)}: {dataset.num_series} series, {sum(dataset.lengths)} rows; "
        f"inputs {escape(', '.join(job.inputs))} → targets {escape(', '.join(job.targets))}\n"
        f"[bold]model[/] {escape(model.state_spec.describe())} ({n_params:,} parameters), "
        f"state policy {config.state_policy}; {job.train_batches.num_lanes} lanes × {settings['steps']} steps, "
        f"{len(job.train_batches)} batches per epoch\n"
        f"[bold]run[/] {escape(str(out))}" + (" (resuming)" if resume else "")
    )

    def show(trainer: Any, row: dict[str, Any]) -> None:
        if not config.progress:
            val = f"  val {row['val_loss']:.4f}" if row["val_loss"] is not None else ""
            console.print(
                f"epoch {row['epoch']:>3}/{config.epochs}  train {row['train_loss']:.4f}{val}  {row['seconds']:.1f}s"
            )

    started = time.perf_counter()
    trainer, _ = pipeline.train_run(job, out, resume=resume, callbacks=[show])
    console.print(f"trained to epoch {trainer.epoch} in {time.perf_counter() - started:.1f}s")
    run = load_run(out)
    evaluation = report(console, run, dataset, settings, settings["horizon"], method)
    pipeline.write_evaluation(out, evaluation)
    written = ["manifest.json", "model.safetensors", "metrics.csv", "evaluation.json"]
    if plots:
        written += [p.name for p in write_plots(run, dataset, settings, evaluation, out)]
    console.print(f"wrote {escape(str(out))}/ {', '.join(written)}")


def _resume_settings(ctx: typer.Context, out: Path, given: dict[str, Any]) -> dict[str, Any]:
    saved = pipeline.read_args(out)
    if saved is None:
        raise typer.BadParameter(f"{out} holds no run to resume ({ARGS_FILE} is missing)", param_hint="--out")
    for name, value in ctx.params.items():
        if name in RESUMABLE or ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        key = {"hidden": "layers", "cell": "layers", "ffill": "fill", "synthetic_steps": "synthetic_steps"}.get(
            name, name
        )
        if given.get(key) != saved.get(key):
            flag = "--" + name.replace("_", "-") if name != "data" else "DATA"
            was = saved.get(key)
            if key == "layers" and was is not None:
                was = StateSpec.from_json(was).describe()
            raise typer.BadParameter(
                f"{value} differs from the run's {was}; a resumed run keeps its data and model settings",
                param_hint=flag,
            )
    return saved


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
    report(_console(), run, dataset, settings, horizon or int(settings.get("horizon", 96)), method)


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
    horizon: Annotated[int, typer.Option(min=1, help="Steps to forecast after the end of each series.")] = 96,
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
        _console().print(
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
    evaluation = pipeline.evaluate(run, dataset, settings, horizon or int(settings.get("horizon", 96)), method)
    target = out_dir or run_dir
    target.mkdir(parents=True, exist_ok=True)
    paths = write_plots(run, dataset, settings, evaluation, target)
    _console().print("wrote " + escape(", ".join(str(p) for p in paths)))


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
    console = _console()
    if spec is not None:
        console.print(_spec_table(StateSpec(parse_layers(spec, "lstm", "--spec"))))
        return
    from hiddenstate.runs.run import load_run

    assert run_dir is not None
    run = load_run(run_dir)
    console.print(_spec_table(run.spec))
    console.print(
        f"[bold]run[/] {escape(str(run.path))}: inputs {escape(', '.join(run.inputs))} → "
        f"targets {escape(', '.join(run.targets))}; "
        f"model {run.manifest.get('model', {}).get('kind')}, version {run.manifest.get('version')}"
    )
    if run.lane_state is None:
        console.print("no carried lane state in this run")
        return
    console.print(_lane_table(run.lane_state, lanes))


def _spec_table(spec: StateSpec) -> Table:
    table = Table(title=f"state spec {escape(spec.describe())}  fingerprint {spec.fingerprint()}", title_justify="left")
    for col in ("layer", "cell", "hidden", "tensors", "names"):
        table.add_column(col)
    for i, ls in enumerate(spec.layers):
        names = ", ".join(f"layers.{i}.{t}" for t in ls.tensor_names)
        shapes = ", ".join(f"{t} (batch, {ls.hidden_size})" for t in ls.tensor_names)
        table.add_row(str(i), ls.cell, str(ls.hidden_size), shapes, names)
    return table


def _lane_table(state: Any, limit: int) -> Table:
    n = state.batch_size
    table = Table(
        title=f"carried state of {n} lanes at the end of training (mean ± std, max |x|)", title_justify="left"
    )
    table.add_column("lane", justify="right")
    names = []
    for i, ls in enumerate(state.spec.layers):
        for t in ls.tensor_names:
            names.append((i, t))
            table.add_column(f"layer {i} {t}", justify="right")
    for lane in range(min(n, limit)):
        cells = []
        for i, t in names:
            v = getattr(state.layers[i], t)[lane].detach().cpu().double()
            cells.append(f"{float(v.mean()):+.3f} ± {float(v.std(unbiased=False)):.3f}, {float(v.abs().max()):.3f}")
        table.add_row(str(lane), *cells)
    if n > limit:
        table.caption = f"{n - limit} more lanes not shown (--lanes {n})"
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """The console script ``hiddenstate``."""
    app(args=list(argv) if argv is not None else None, prog_name="hiddenstate")


if __name__ == "__main__":
    main()

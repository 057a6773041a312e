"""``hiddenstate train``: read the data, train with truncated BPTT, evaluate, plot."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

try:  # typer >= 0.2x vendors its own click
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.core import ParameterSource  # type: ignore[no-redef,assignment]

from hiddenstate.cli import pipeline
from hiddenstate.cli.output import report
from hiddenstate.cli.pipeline import ARGS_FILE, write_plots
from hiddenstate.cli.root import (
    Backend,
    Cell,
    Layout,
    Likelihood,
    Loss,
    Method,
    Policy,
    Precision,
    app,
    fractions,
    names,
    new_console,
    parse_layers,
)
from hiddenstate.cli.settings import RunSettings
from hiddenstate.state import StateSpec
from hiddenstate.train.resume import MAY_CHANGE, MAY_GROW, changes

__all__ = ["RESUMABLE", "train"]

# flags that may change when a run is resumed (train.resume's, which Trainer.fit checks against the
# checkpoint, and what is shown); every other explicit flag must match the run
RESUMABLE = MAY_CHANGE | MAY_GROW | {"plots", "method", "out", "resume"}
DEFAULTS = RunSettings()
_HIDDEN = ",".join(str(layer["hidden_size"]) for layer in DEFAULTS.layers)


TRAIN_EPILOG = """\
[bold]Examples[/bold]

  [dim]# built-in synthetic data (2 variables, daily + weekly cycles): about 10 seconds on 2 cores[/dim]
  hiddenstate train --out runs/demo

  [dim]# continue that run (60 epochs) up to 90 epochs[/dim]
  hiddenstate train --out runs/demo --resume --epochs 90

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
    ] = DEFAULTS.batch_size,
    steps: Annotated[int, typer.Option(min=1, help="Steps per chunk (truncated-BPTT window).")] = DEFAULTS.steps,
    hidden: Annotated[str, typer.Option(help="Hidden sizes per layer, e.g. 64,32 (or lstm:64,gru:32).")] = _HIDDEN,
    cell: Annotated[Cell, typer.Option(help="Cell of every layer.")] = DEFAULTS.layers[0]["cell"],
    lr: Annotated[float, typer.Option(help="Learning rate (Adam), above 0.")] = DEFAULTS.lr,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; CPU runs are deterministic.")] = DEFAULTS.seed,
    state_policy: Annotated[
        Policy, typer.Option("--state-policy", help="Where each chunk's state comes from.")
    ] = DEFAULTS.state_policy,
    time_col: Annotated[
        str | None, typer.Option("--time-col", help="Time column of a wide file (e.g. date).")
    ] = DEFAULTS.time_col,
    id_col: Annotated[str, typer.Option("--id-col", help="Series id column of a long file.")] = DEFAULTS.id_col,
    ds_col: Annotated[str, typer.Option("--ds-col", help="Time column of a long file.")] = DEFAULTS.ds_col,
    layout: Annotated[Layout, typer.Option(help="File layout.")] = DEFAULTS.layout,
    ffill: Annotated[bool, typer.Option("--ffill", help="Forward-fill missing values instead of failing.")] = False,
    inputs: Annotated[str | None, typer.Option(help="Input columns, comma-separated (default: all).")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns, comma-separated (default: the inputs).")] = None,
    split: Annotated[
        str, typer.Option(help="Train, val, test fractions of each series, or 'ett' for ETT's standard borders.")
    ] = ",".join(str(f) for f in DEFAULTS.split),
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout between layers.")] = DEFAULTS.dropout,
    loss: Annotated[Loss, typer.Option(help="Training loss.")] = DEFAULTS.loss,
    likelihood: Annotated[
        Likelihood | None,
        typer.Option(
            help="Train a likelihood head by its NLL instead of --loss (on the standardised data; "
            "for counts use hs.Forecaster(likelihood='negbin'))."
        ),
    ] = DEFAULTS.likelihood,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many epochs without a better val loss.")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help="Validate and keep a moving average of the weights with this decay per optimizer step "
            "(e.g. 0.995; between 0 and 1)."
        ),
    ] = None,
    horizon: Annotated[
        int, typer.Option(min=1, help="Forecast horizon for the test evaluation and the direct head.")
    ] = DEFAULTS.horizon,
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
    synthetic_steps: Annotated[
        int, typer.Option("--synthetic-steps", min=500, help="Rows of built-in data.")
    ] = DEFAULTS.synthetic_steps,
) -> None:
    """Train a stateful model on a CSV/Parquet file (or built-in data), then evaluate and plot it.

    Prints test metrics next to a repeat-last-value baseline; writes weights and plots into the run.
    """
    from hiddenstate.distributed import launched, rank, restarted
    from hiddenstate.runs.run import load_run

    console = new_console()
    console.quiet = rank() != 0  # under torchrun rank 0 alone prints
    if out is None and launched():
        raise typer.BadParameter(
            "under torchrun every rank and every restart needs the same run directory", param_hint="--out"
        )
    if lr <= 0:
        raise typer.BadParameter(f"{lr} is not above 0", param_hint="--lr")
    if ema is not None and not 0 < ema < 1:
        raise typer.BadParameter(f"{ema} is not between 0 and 1 (a decay such as 0.995)", param_hint="--ema")
    out = out if out is not None else Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    resume = resume or (restarted() and pipeline.holds_run(out))  # torchrun restarted the group: continue
    settings = RunSettings(
        data=str(Path(data).resolve()) if data is not None else None,  # the run works from any directory
        time_col=time_col,
        id_col=id_col,
        ds_col=ds_col,
        layout=layout,
        fill="ffill" if ffill else "error",
        inputs=names(inputs, "--inputs"),
        targets=names(targets, "--targets"),
        split=fractions(split),
        synthetic_steps=synthetic_steps,
        synthetic_seed=seed,
        layers=tuple(StateSpec(parse_layers(hidden, cell)).to_json()),
        dropout=dropout,
        steps=steps,
        batch_size=batch_size,
        state_policy=state_policy,
        horizon=horizon,
        seed=seed,
        lr=lr,
        loss=loss,
        likelihood=likelihood,
    )
    if resume:
        settings = _resume_settings(ctx, out, settings)
        saved = _saved_train_config(out)  # a resume after Ctrl-C keeps the run's own epochs and patience
        if ctx.get_parameter_source("epochs") != ParameterSource.COMMANDLINE:
            epochs = saved.get("epochs", epochs) if isinstance(saved.get("epochs"), int) else epochs
        if ctx.get_parameter_source("patience") != ParameterSource.COMMANDLINE:
            patience = saved.get("patience") if isinstance(saved.get("patience"), int) else patience
        if ctx.get_parameter_source("ema") != ParameterSource.COMMANDLINE:
            ema = saved.get("ema") if isinstance(saved.get("ema"), float) else ema
    elif pipeline.holds_run(out):
        raise typer.BadParameter(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out", param_hint="--out"
        )

    job = pipeline.prepare_training(
        settings,
        epochs=epochs,
        patience=patience,
        ema=ema,
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
        f"state policy {config.state_policy}; {job.train_batches.num_lanes} lanes × {settings.steps} steps, "
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
    if rank() != 0:
        return  # rank 0 evaluates every series on the test split and writes the files
    console.print(f"trained to epoch {trainer.epoch} in {time.perf_counter() - started:.1f}s")
    run = load_run(out)
    evaluation = report(console, run, dataset, settings, settings.horizon, method)
    pipeline.write_evaluation(out, evaluation)
    written = ["manifest.json", "model.safetensors", "metrics.csv", "evaluation.json"]
    if plots:
        written += [p.name for p in write_plots(run, dataset, settings, evaluation, out)]
    console.print(f"wrote {escape(str(out))}/ {', '.join(written)}")


def _saved_train_config(out: Path) -> dict[str, Any]:
    """The train_config of the run's newest checkpoint ({} when there is none to read; resuming
    then says what is wrong)."""
    import json

    from hiddenstate.runs.run import list_checkpoints

    found = list_checkpoints(out)
    if not found:
        return {}
    try:
        config = json.loads((found[-1] / "checkpoint.json").read_text()).get("train_config")
    except (OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


def _resume_settings(ctx: typer.Context, out: Path, given: RunSettings) -> RunSettings:
    saved = pipeline.read_args(out)
    if saved is None:
        raise typer.BadParameter(f"{out} holds no run to resume ({ARGS_FILE} is missing)", param_hint="--out")
    given_json, saved_json = given.to_json(), saved.to_json()
    if saved_json.get("data"):  # a run saved with the path as typed reads it from here, as before
        saved_json["data"] = str(Path(saved_json["data"]).resolve())
    for name, value in ctx.params.items():
        if name in RESUMABLE or ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        key = {"hidden": "layers", "cell": "layers", "ffill": "fill"}.get(name, name)
        if changes(saved_json, given_json, names=[key], may_change=(), may_grow=()):
            flag = "--" + name.replace("_", "-") if name != "data" else "DATA"
            was = saved_json.get(key)
            if key == "layers" and was is not None:
                was = StateSpec.from_json(was).describe()
            raise typer.BadParameter(
                f"{value} differs from the run's {was}; a resumed run keeps its data and model settings",
                param_hint=flag,
            )
    return saved

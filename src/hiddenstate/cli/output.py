"""What the command line prints: metric tables, the model-vs-baseline verdict, state tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hiddenstate.cli import pipeline
from hiddenstate.cli.settings import RunSettings
from hiddenstate.state import StateSpec

__all__ = ["lane_table", "report", "spec_table"]


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


def report(console: Console, run: Any, dataset: Any, settings: RunSettings, horizon: int, method: str) -> Any:
    """Evaluate on the test split, print model vs repeat-last, return the chosen method's Evaluation."""
    evals = pipeline.evaluate_methods(run, dataset, settings, horizon, method)
    main = next(iter(evals.values()))
    rows = {f"model ({e.method})": e.model for e in evals.values()}
    rows["repeat last value"] = main.baseline
    how = (
        "state carried through each series"
        if settings.state_policy in ("carry", "carry+encode")
        else (f"state warmed over the last {settings.steps} steps")
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


def spec_table(spec: StateSpec) -> Table:
    table = Table(title=f"state spec {escape(spec.describe())}  fingerprint {spec.fingerprint()}", title_justify="left")
    for col in ("layer", "cell", "hidden", "tensors", "names"):
        table.add_column(col)
    for i, ls in enumerate(spec.layers):
        names = ", ".join(f"layers.{i}.{t}" for t in ls.tensor_names)
        shapes = ", ".join(f"{t} (batch, {ls.hidden_size})" for t in ls.tensor_names)
        table.add_row(str(i), ls.cell, str(ls.hidden_size), shapes, names)
    return table


def lane_table(state: Any, limit: int) -> Table:
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

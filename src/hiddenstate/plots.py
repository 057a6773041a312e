"""Fan charts of probabilistic forecasts: the paths' central intervals, shaded, per series.

:func:`fan_figure` draws the frames of ``Forecaster.predict`` / ``cross_validation`` /
``sample`` (``Forecaster.plot`` writes one); the command line's ``forecast.png`` shades a
likelihood run's intervals with the same colours. matplotlib (``pip install 'hiddenstate[cli]'``)
draws through its object API: no pyplot, no backend change, no display needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hiddenstate.errors import ConfigError, DataError

__all__ = ["fan_figure", "plot_fan", "shade_intervals"]

FORECAST_COLOR = "#d62728"
TRUTH_COLOR = "#1f77b4"


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG beside ``path``, then rename it there (no half-written picture)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path


def plot_fan(path: str | os.PathLike[str], history: Any, forecasts: Any, **kw: Any) -> Path:
    """Write :func:`fan_figure` (the same arguments) to ``path`` as a PNG."""
    return save_png(fan_figure(history, forecasts, **kw), Path(path))


def fan_figure(
    history: Any,
    forecasts: Any,
    *,
    id_col: str = "unique_id",
    time_col: str = "ds",
    target_col: str = "y",
    alias: str = "HiddenState",
    ids: Sequence[Any] | None = None,
    level: Sequence[int] | None = None,
    samples: Any = None,
    history_rows: int = 96,
    max_series: int = 8,
    title: str = "",
) -> Figure:
    """Fan charts of long-format forecasts, one panel per series.

    ``forecasts`` is a frame from ``Forecaster.predict`` (``[id, time, <alias>, <alias>-median,
    <alias>-lo-<level>, <alias>-hi-<level>, ...]``) or ``Forecaster.cross_validation`` (with
    ``cutoff`` and the truth in ``target_col``: every window is drawn). Each level is a shaded
    central interval, the median (else the mean) a line. ``history`` (``[id, time, target]``, or
    None) is drawn up to ``history_rows`` rows before each series' first forecast step, and its
    rows inside the forecast span as the truth. ``samples`` (a ``Forecaster.sample`` frame) adds
    its paths as thin lines. ``ids``: the series to draw (default: the first ``max_series``);
    ``level``: the intervals to shade (default: every level the frame has).
    """
    _need_columns("forecasts", forecasts, [id_col, time_col])
    centre = f"{alias}-median" if f"{alias}-median" in forecasts.columns else alias
    _need_columns("forecasts", forecasts, [centre])
    lows = (re.fullmatch(rf"{re.escape(alias)}-lo-(\d+)", str(c)) for c in forecasts.columns)
    present = sorted(int(m[1]) for m in lows if m and f"{alias}-hi-{m[1]}" in forecasts.columns)
    levels = present if level is None else [int(v) for v in level]
    missing = [v for v in levels if v not in present]
    if missing:
        raise ConfigError(
            f"forecasts: no {alias}-lo-{missing[0]} / {alias}-hi-{missing[0]} columns; the levels there are "
            f"{', '.join(map(str, present)) or 'none'} (predict(level=[...]) makes others)"
        )
    if history is not None:
        _need_columns("history", history, [id_col, time_col, target_col])
    if samples is not None:
        _need_columns("samples", samples, [id_col, time_col, "sample_id", alias])
    known = list(dict.fromkeys(forecasts[id_col].tolist()))
    if ids is None:
        chosen = known[:max_series]
    else:
        chosen = list(ids)
        unknown = [u for u in chosen if u not in set(known)]
        if unknown:
            raise DataError(f"ids: series {unknown[0]!r} is not in forecasts")
    if not chosen:
        raise DataError("forecasts: no rows to draw")
    height = 2.4 * len(chosen) + 0.9
    fig = Figure(figsize=(11, height))
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    windows = "cutoff" in forecasts.columns
    for ax, uid in zip(axes, chosen, strict=True):
        f = forecasts[forecasts[id_col] == uid]
        start, stop = f[time_col].min(), f[time_col].max()
        if history is not None:
            h = history[history[id_col] == uid]
            before = h[h[time_col] < start].tail(history_rows)
            ax.plot(before[time_col], before[target_col], color=TRUTH_COLOR, lw=1.0, alpha=0.6, label="history")
            inside = h[(h[time_col] >= start) & (h[time_col] <= stop)]
            if len(inside) and not (windows and target_col in f.columns):
                ax.plot(inside[time_col], inside[target_col], color=TRUTH_COLOR, lw=1.4, label="truth")
        groups = list(f.groupby("cutoff", sort=True)) if windows else [(None, f)]
        for k, (_, w) in enumerate(groups):
            first = k == 0
            bands = {v: (w[f"{alias}-lo-{v}"], w[f"{alias}-hi-{v}"]) for v in levels}
            shade_intervals(ax, w[time_col], bands, labelled=first)
            ax.plot(
                w[time_col],
                w[centre],
                color=FORECAST_COLOR,
                lw=1.5,
                label=("median" if centre != alias else "mean") if first else None,
            )
            if windows and target_col in w.columns:
                ax.plot(w[time_col], w[target_col], color=TRUTH_COLOR, lw=1.4, label="truth" if first else None)
        if samples is not None:
            sp = samples[samples[id_col] == uid]
            for j, (_, path) in enumerate(sp.groupby("sample_id", sort=True)):
                ax.plot(
                    path[time_col],
                    path[alias],
                    color=FORECAST_COLOR,
                    lw=0.6,
                    alpha=0.5,
                    label="paths" if j == 0 else None,
                )
        ax.set_ylabel(str(uid))
        ax.grid(alpha=0.25)
        ax.legend(loc="upper left", fontsize=7, frameon=False, ncol=3)
    axes[0].set_title(title or f"{alias}: forecasts of {len(chosen)} series", loc="left")
    for ax in axes:  # each panel keeps its own stamps: series need not share them
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.45 / height, bottom=0.6 / height, hspace=0.4)
    return fig


def _need_columns(what: str, frame: Any, columns: Sequence[str]) -> None:
    have = getattr(frame, "columns", None)
    if have is None:
        raise DataError(f"{what}: expected a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{what}: no column {missing[0]!r} (columns: {', '.join(map(str, have))})")


def shade_intervals(ax: Any, x: Any, bands: Mapping[int, tuple[Any, Any]], *, labelled: bool = True) -> None:
    """Shade each central interval ``{level: (lo, hi)}`` over ``x`` on ``ax``: the widest first
    and lightest, so the narrower ones sit darker on top."""
    for level, (lo, hi) in sorted(bands.items(), reverse=True):
        ax.fill_between(
            x, lo, hi, color=FORECAST_COLOR, alpha=_band_alpha(level), lw=0,
            label=f"{level}% interval" if labelled else None,
        )  # fmt: skip


def _band_alpha(level: int) -> float:
    """Shading of a central interval: the narrower, the darker (50%: 0.38, 90%: 0.18)."""
    return float(np.clip(0.58 - 0.4 * level / 100, 0.1, 0.5))

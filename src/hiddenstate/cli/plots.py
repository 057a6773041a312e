"""Pictures of a run: ``forecast.png`` (forecast vs truth) and ``states.png`` (the hidden state over time).

``states.png`` answers "what is my LSTM's state doing": for each layer a heatmap of every unit of
``h`` over time and, for an LSTM layer, of ``c``, under the input series that drove them. The
per-step ``h`` comes from :meth:`StackedRNN.layer_outputs`; the per-step ``c`` is not an output
of ``nn.LSTM``, so it is read by stepping one row at a time (fine here: plotting is not a hot path).

Figures are drawn with matplotlib's object API (no pyplot, no global backend change), so no
display is needed and a user's interactive backend is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from hiddenstate.plots import FORECAST_COLOR as _FORECAST_COLOR
from hiddenstate.plots import TRUTH_COLOR as _TRUTH_COLOR
from hiddenstate.plots import save_png as _save
from hiddenstate.plots import shade_intervals
from hiddenstate.state import State

Model = Any  # a SequenceModel (or anything with .rnn/.state_spec and initial_state)

__all__ = ["forecast_figure", "plot_forecast", "plot_states", "state_trajectories"]

_BASELINE_COLOR = "#7f7f7f"


def plot_forecast(
    path: str | Path, history: np.ndarray, truth: np.ndarray, pred: np.ndarray, names: Sequence[str], **kw: Any
) -> Path:
    """Write :func:`forecast_figure` (the same arguments: ``baseline``, ``bands``, ``title``) to ``path``."""
    return _save(forecast_figure(history, truth, pred, names, **kw), Path(path))


def forecast_figure(
    history: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    names: Sequence[str],
    *,
    baseline: np.ndarray | None = None,
    bands: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str = "",
) -> Figure:
    """The forecast-vs-truth figure, one panel per target.

    ``history`` ``(warmup, n_targets)`` is drawn before the forecast origin; ``truth``, ``pred`` and
    the optional repeat-last ``baseline`` are ``(horizon, n_targets)``; ``bands`` maps a level
    (80 for the central 80%) to its ``(lo, hi)``, each ``(horizon, n_targets)``, drawn as shaded
    intervals from the sample paths (a likelihood model); all in original units.
    """
    history, truth, pred = (np.asarray(a, dtype=np.float64) for a in (history, truth, pred))
    n = len(names)
    raise_title = 0.25 if bands else 0.0  # the legend's row is longer: the title goes above it
    height = 2.6 * n + 0.9 + raise_title
    fig = Figure(figsize=(11, height))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    t_hist = np.arange(-history.shape[0] + 1, 1)  # the origin (last known step) is 0
    t_fut = np.arange(1, truth.shape[0] + 1)
    for j, ax in enumerate(axes[:, 0]):
        shade_intervals(
            ax, t_fut, {v: (np.asarray(lo)[:, j], np.asarray(hi)[:, j]) for v, (lo, hi) in (bands or {}).items()}
        )
        ax.plot(t_hist, history[:, j], color=_TRUTH_COLOR, lw=1.0, alpha=0.55, label="history")
        ax.plot(np.r_[0, t_fut], np.r_[history[-1, j], truth[:, j]], color=_TRUTH_COLOR, lw=1.4, label="truth")
        # join the forecast to the last observation so the hand-off is visible
        ax.plot(np.r_[0, t_fut], np.r_[history[-1, j], pred[:, j]], color=_FORECAST_COLOR, lw=1.6, label="forecast")
        if baseline is not None:
            b = np.asarray(baseline, dtype=np.float64)
            ax.plot(t_fut, b[:, j], color=_BASELINE_COLOR, lw=1.0, ls="--", label="repeat last")
        ax.axvline(0.5, color="black", lw=0.8, ls=":")
        ax.set_ylabel(names[j])
        ax.grid(alpha=0.25)
    axes[0, 0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=6, fontsize=8, frameon=False)
    axes[0, 0].set_title(
        title or f"forecast of {truth.shape[0]} steps after {history.shape[0]} steps of history",
        loc="left",
        pad=6 + 72 * raise_title,
    )
    axes[-1, 0].set_xlabel("steps relative to the forecast origin")
    # fixed margins in inches: tight_layout measures every tick label and costs seconds
    top = 1 - (0.45 + raise_title) / height
    fig.subplots_adjust(left=0.08, right=0.98, top=top, bottom=0.55 / height, hspace=0.12)
    return fig


def state_trajectories(
    model: Model, x_norm: torch.Tensor | np.ndarray, state: State | None = None
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Per-step ``h`` and ``c`` of every layer for one series ``x_norm`` ``(steps, n_in)``.

    Returns ``(hs, cs)``: ``hs[i]`` is ``(steps, hidden_i)``; ``cs[i]`` likewise for an LSTM layer
    and None otherwise. ``state`` (batch 1) is where the run starts; None means the model's
    initial state (an encoder model takes the first row as ``cond``, and the trajectories then
    cover the remaining steps).
    """
    p = next(model.parameters())
    x = torch.as_tensor(np.asarray(x_norm) if not isinstance(x_norm, torch.Tensor) else x_norm)
    x = x.to(p.device, p.dtype).unsqueeze(0)  # (1, steps, n_in)
    rnn = model.rnn if hasattr(model, "rnn") else model
    with torch.no_grad():
        if state is None and hasattr(model, "initial_state"):
            cond = None
            if int(getattr(model, "cond_size", 0) or 0):
                cond, x = x[:, 0], x[:, 1:]
            state = model.initial_state(1, cond)
        outputs, _ = rnn.layer_outputs(x, state)  # per layer (1, steps, hidden_i)
        hs = [o[0].cpu().double().numpy() for o in outputs]
        cs: list[np.ndarray | None] = [None] * len(hs)
        lstm_layers = [i for i, ls in enumerate(rnn.state_spec.layers) if ls.has_c]
        if lstm_layers:
            s = state
            per_step: list[list[torch.Tensor]] = [[] for _ in hs]
            for t in range(x.shape[1]):
                _, s = rnn(x[:, t : t + 1], s)
                for i in lstm_layers:
                    per_step[i].append(s.layers[i].c[0])
            for i in lstm_layers:
                cs[i] = torch.stack(per_step[i]).cpu().double().numpy()  # (steps, hidden_i)
    return hs, cs


def _heatmap(fig: Figure, ax: Axes, values: np.ndarray, label: str, bounded: bool) -> None:
    # h lies in (-1, 1); c is unbounded, so its colour range is set by its own spread
    lim = float(np.percentile(np.abs(values), 99)) or 1.0
    if bounded:
        lim = min(lim, 1.0)
    im = ax.imshow(values.T, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    ax.set_yticks([0, values.shape[1] - 1])
    ax.set_yticklabels(["unit 0", f"{values.shape[1] - 1}"], fontsize=7)
    fig.colorbar(im, ax=ax, pad=0.01, fraction=0.025)


def plot_states(
    path: str | Path,
    model: Model,
    x_norm: torch.Tensor | np.ndarray,
    input_names: Sequence[str],
    *,
    state: State | None = None,
    title: str = "",
) -> Path:
    """Write the hidden-state picture for one stretch of one series, ``x_norm`` ``(steps, n_in)``.

    The top panel shows the (normalised) inputs; below it, per layer, a heatmap of ``h`` (unit by
    time) and for LSTM layers one of ``c``, and a panel with the mean absolute value of each
    tensor per step, which shows how the state settles after a reset and follows the input.
    """
    hs, cs = state_trajectories(model, x_norm, state)
    x = np.asarray(x_norm.cpu() if isinstance(x_norm, torch.Tensor) else x_norm, dtype=np.float64)
    x = x[-hs[0].shape[0] :]  # an encoder model used row 0 as cond
    spec = (model.rnn if hasattr(model, "rnn") else model).state_spec
    panels: list[tuple[str, np.ndarray, bool]] = []
    for i, ls in enumerate(spec.layers):
        panels.append((f"layer {i}\n{ls.cell} h", hs[i], True))
        c = cs[i]
        if c is not None:
            panels.append((f"layer {i}\n{ls.cell} c", c, False))
    heights = [1.3] + [1.0 + min(h.shape[1], 64) / 64 for _, h, _ in panels] + [1.1]
    height = 1.3 * sum(heights) + 0.9
    fig = Figure(figsize=(12, height))
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    steps = np.arange(x.shape[0])
    for j, name in enumerate(input_names):
        axes[0].plot(steps, x[:, j], lw=0.9, label=name)
    axes[0].set_ylabel("inputs\n(normalised)", rotation=0, ha="right", va="center", fontsize=9)
    axes[0].legend(loc="upper right", ncol=min(len(input_names), 6), fontsize=7, frameon=False)
    axes[0].grid(alpha=0.25)
    # invisible colour bars beside the line panels keep every panel's x axis the same width
    fig.colorbar(ScalarMappable(), ax=axes[0], pad=0.01, fraction=0.025).ax.set_visible(False)
    for ax, (label, values, bounded) in zip(axes[1:-1], panels, strict=True):
        _heatmap(fig, ax, values, label, bounded)
    summary = axes[-1]
    for label, values, _ in panels:
        summary.plot(steps, np.abs(values).mean(axis=1), lw=1.0, label=label.replace("\n", " "))
    summary.set_ylabel("mean |value|", rotation=0, ha="right", va="center", fontsize=9)
    summary.legend(loc="best", ncol=min(len(panels), 4), fontsize=7, framealpha=0.8)
    summary.grid(alpha=0.25)
    fig.colorbar(ScalarMappable(), ax=summary, pad=0.01, fraction=0.025).ax.set_visible(False)
    summary.set_xlabel("step")
    axes[0].set_title(title or f"hidden state of {spec.describe()} over {x.shape[0]} steps")
    fig.subplots_adjust(left=0.12, right=0.96, top=1 - 0.4 / height, bottom=0.5 / height, hspace=0.12)
    return _save(fig, Path(path))

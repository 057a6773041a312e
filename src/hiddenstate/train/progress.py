"""The Trainer's progress bar: one rich bar per epoch on stderr (loss, val loss, sample-steps/s).

It shows only when asked for and stderr is a terminal; otherwise every method does nothing. The
Trainer reads the loss off the device for it only when :meth:`Progress.due` says so (every few
chunks), so the bar adds no per-chunk device sync.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """A rich progress bar on stderr (loss, sample-steps/s), or nothing when disabled or not a TTY.

    Use as a context manager around the epochs: ``start_epoch``, then per chunk ``if bar.due():
    bar.advance(loss, sample_steps)``, then ``end_epoch`` and ``show_val``.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}{task.fields[val]}"),
                TextColumn("{task.fields[speed]} sample-steps/s"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start_epoch(self, epoch: int, epochs: int, total: int | None) -> None:
        if self._bar is None:
            return
        self._every = max(1, (total or 100) // 20)
        self._seen = 0
        self._started = time.perf_counter()
        self._task = self._bar.add_task(f"epoch {epoch}/{epochs}", total=total, loss="…", val="", speed="…")

    def due(self) -> bool:
        """Count one chunk; True every few chunks, when :meth:`advance` wants the running loss."""
        if self._bar is None:
            return False
        self._seen += 1
        return self._seen % self._every == 0

    def advance(self, loss: float, sample_steps: int) -> None:
        """Show the running ``loss`` and the throughput after the chunks counted so far."""
        if self._bar is not None:
            self._show(loss, sample_steps, completed=self._seen)

    def end_epoch(self, loss: float, sample_steps: int) -> None:
        if self._bar is not None:
            self._show(loss, sample_steps, completed=self._bar.tasks[-1].total or self._seen)

    def show_val(self, val_loss: float | None) -> None:
        if self._bar is not None and val_loss is not None:
            self._bar.update(self._task, val=f"  val {val_loss:.4g}")

    def _show(self, loss: float, sample_steps: int, completed: int) -> None:
        speed = sample_steps / max(time.perf_counter() - self._started, 1e-9)
        self._bar.update(self._task, completed=completed, loss=f"{loss:.4g}", speed=f"{speed:,.0f}")

"""Training: the one truncated-BPTT loop, its frozen config, precision and progress.

:class:`Trainer` (:mod:`.trainer`) is the only training loop in hiddenstate; :class:`TrainConfig`
(:mod:`.config`) says how it runs; :mod:`.precision` holds autocast and the grad scaler;
:mod:`.progress` the terminal progress bar (rich, optional); :mod:`.resume` what a resumed run may
change (epochs and patience may grow; what changes the results may not).
"""

from __future__ import annotations

from hiddenstate.train.config import TrainConfig
from hiddenstate.train.trainer import Callback, History, Trainer, default_threads

__all__ = ["Callback", "History", "TrainConfig", "Trainer", "default_threads"]

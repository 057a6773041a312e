"""Keras interop: bring Keras models in with Keras's own numbers, a validated state API for live
Keras 3 models, and the way back to a ``.keras`` file.

* :func:`load` reads a ``.keras`` or ``.h5`` file into a :class:`~hiddenstate.SequenceModel`
  with the config JSON and h5py only: no Keras object is deserialized, no Lambda code runs, and
  Keras need not be installed.
* :func:`get_state`, :func:`set_state`, :func:`reset_state` and :func:`check_state` read and
  write the states of a live stateful Keras 3 model (any backend) with the library's checks.
* :func:`save` writes an hs model back as a ``.keras`` file that ``keras.saving.load_model`` opens.

The mapping and what is refused: docs/keras.md.
"""

from __future__ import annotations

import os

from hiddenstate.interop.keras.convert import to_sequence_model
from hiddenstate.interop.keras.files import KerasFile, read_keras_file
from hiddenstate.interop.keras.live import check_state, get_state, reset_state, set_state
from hiddenstate.interop.keras.writer import save
from hiddenstate.model import SequenceModel

__all__ = ["KerasFile", "check_state", "get_state", "load", "read_keras_file", "reset_state", "save", "set_state"]


def load(path: str | os.PathLike[str]) -> SequenceModel:
    """The :class:`~hiddenstate.SequenceModel` computing what the Keras model in ``path`` computes.

    Raises CheckpointError naming the file when it is missing, truncated or corrupt, and
    ConfigError naming the Keras layer and option for what cannot be computed the same way.
    """
    return to_sequence_model(read_keras_file(path))

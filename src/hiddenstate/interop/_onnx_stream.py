"""``OnnxStream``: run an exported model with onnxruntime and numpy alone, carrying the state.

This module imports neither torch nor the exporter; :mod:`hiddenstate.interop.onnx` re-exports
:class:`OnnxStream`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, ShapeError

__all__ = ["FORMAT", "OnnxStream"]

#: The ``hiddenstate.format`` metadata of every exported file.
FORMAT = "hiddenstate-onnx/1"


def _session(data: bytes | str, threads: int | None = 1) -> Any:
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OnnxStream:
    """Run an exported model with onnxruntime and numpy alone, carrying the state between calls.

    Args:
        path: a file written by :func:`export_onnx`.
        batch_size: the number of lanes (rows) carried.
        threads: onnxruntime's intra-op threads (None: its default).

    ``step(x, cond=None)`` takes ``x`` ``(batch, steps, input_size)`` (or ``(batch, input_size)``
    for one step) and returns ``y``; the state moves on. ``reset(rows)`` makes those rows start
    afresh at the next step (all rows when None); a fresh stream starts with every row reset.
    ``state`` is a dict of ``(batch, hidden_i)`` arrays by name (``layers.0.h``, ...); assign
    one to continue from a stored state. A file exported without the ``reset`` input starts and
    resets lanes to zeros.
    """

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 1, threads: int | None = 1) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: ONNX file not found")
        self._session = _session(str(self.path), threads)
        meta = self._session.get_modelmeta().custom_metadata_map
        if meta.get("hiddenstate.format") != FORMAT:
            raise ConfigError(f"{self.path}: not written by hiddenstate's export_onnx (no {FORMAT} metadata)")
        self.metadata = dict(meta)
        shapes = json.loads(meta["hiddenstate.state_shapes"])
        self.state_names = tuple(json.loads(meta["hiddenstate.state_names"]))
        self._hidden = {n: int(shapes[n][1]) for n in self.state_names}
        graph_inputs = {i.name: i for i in self._session.get_inputs()}
        self.input_size = int(graph_inputs["x"].shape[2])
        self.cond_size = int(graph_inputs["cond"].shape[1]) if "cond" in graph_inputs else 0
        self._reset_shape = None
        if "reset" in graph_inputs:
            self._reset_shape = (batch_size,) if len(graph_inputs["reset"].shape) == 1 else (batch_size, 1)
        self._outputs = ["y"] + [f"state_out.{n}" for n in self.state_names]
        self.batch_size = batch_size
        self._state = {n: np.zeros((batch_size, h), np.float32) for n, h in self._hidden.items()}
        self._fresh = np.ones(batch_size, bool)

    @property
    def state(self) -> dict[str, np.ndarray]:
        return {n: v.copy() for n, v in self._state.items()}

    @state.setter
    def state(self, values: dict[str, Any]) -> None:
        new = {}
        for n, h in self._hidden.items():
            if n not in values:
                raise ShapeError(f"state: {n} is missing; expected {', '.join(self.state_names)}")
            v = np.asarray(values[n], dtype=np.float32)
            if v.shape != (self.batch_size, h):
                raise ShapeError(f"state {n}: expected shape (batch={self.batch_size}, hidden={h}), got {v.shape}")
            new[n] = v.copy()
        self._state = new
        self._fresh[:] = False

    def reset(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
        """Rows (all when None) start from the model's initial state at the next step: row
        indices, or a boolean mask ``(batch,)`` as ``model(..., reset=mask)`` takes."""
        if rows is None:
            self._fresh[:] = True
        else:
            a = np.asarray(rows)
            if a.dtype == bool:
                if a.shape != (self.batch_size,):
                    raise ShapeError(f"reset: a mask must have shape (batch={self.batch_size},), got {a.shape}")
                self._fresh |= a
            else:
                if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= self.batch_size):
                    raise ShapeError(f"reset: rows must be indices in [0, {self.batch_size}), got {a.tolist()}")
                self._fresh[a.astype(np.int64)] = True
        if self._reset_shape is None:  # no reset input: the initial state is zeros
            for v in self._state.values():
                v[self._fresh] = 0.0
            self._fresh[:] = False

    def step(self, x: Any, cond: Any = None) -> np.ndarray:
        """``y`` for ``x`` ``(batch, steps, input_size)`` or ``(batch, input_size)``; the state moves on."""
        arr = np.asarray(x, dtype=np.float32)
        one = arr.ndim == 2
        if one:
            arr = arr[:, None, :]
        if arr.ndim != 3 or arr.shape[0] != self.batch_size or arr.shape[1] < 1 or arr.shape[2] != self.input_size:
            raise ShapeError(
                f"x: expected shape (batch={self.batch_size}, steps>=1, input={self.input_size}), got {np.shape(x)}"
            )
        feeds: dict[str, np.ndarray] = {"x": arr, **{f"state_in.{n}": v for n, v in self._state.items()}}
        if self._reset_shape is not None:
            feeds["reset"] = self._fresh.reshape(self._reset_shape)
        if self.cond_size:
            if cond is None:
                if self._fresh.any():
                    raise ShapeError(
                        f"cond: rows starting afresh need cond of shape "
                        f"(batch={self.batch_size}, cond={self.cond_size})"
                    )
                cond = np.zeros((self.batch_size, self.cond_size), np.float32)
            cond = np.asarray(cond, dtype=np.float32)
            if cond.shape != (self.batch_size, self.cond_size):
                raise ShapeError(
                    f"cond: expected shape (batch={self.batch_size}, cond={self.cond_size}), got {cond.shape}"
                )
            feeds["cond"] = cond
        out = self._session.run(self._outputs, feeds)
        self._state = dict(zip(self.state_names, out[1:], strict=True))
        self._fresh[:] = False
        y = out[0]
        return y[:, 0] if one and y.ndim == 3 else y

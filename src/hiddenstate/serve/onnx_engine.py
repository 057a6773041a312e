"""The service's onnxruntime engine: ``hiddenstate serve RUN --engine onnx``.

:class:`OnnxEngineModel` stands in for a :class:`~hiddenstate.model.SequenceModel` where the
service calls it, ``model(x, state) -> (y, State)``, and runs that call in onnxruntime on the
graph of :func:`hiddenstate.interop.onnx.export_onnx` (normalised units: the service scales the
values itself). Everything else (the initial state, the state encoder, the direct head, the
config) is the torch model's own. The graph is checked against the model when the engine is
built, as every export is, so both engines give the same answers to 1e-5.

Measured (docs/performance.md, "ONNX export"): onnxruntime takes one stream's step several times
faster than torch, but a step of 1,000 streams no faster (and behind the fused kernel), so it is an
option, not the default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hiddenstate.state import LayerState, State

__all__ = ["OnnxEngineModel", "onnx_engine"]


class OnnxEngineModel:
    """``model(x, state, *, cond=None, reset=None) -> (y, State)`` in onnxruntime; other attributes
    are the wrapped torch model's."""

    def __init__(self, model: Any, session: Any, report: Any) -> None:
        self._model = model
        self._session = session
        self.report = report
        self.engine = "onnx"
        spec = model.state_spec
        self._names = [f"state_in.{n}" for n in spec.names]
        self._outputs = ["y"] + [f"state_out.{n}" for n in spec.names]
        self._cond = int(getattr(model, "cond_size", 0) or 0)

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxEngineModel:
        # the served copy: its own torch model; the onnxruntime session is read-only and shared
        import copy

        return OnnxEngineModel(copy.deepcopy(self._model, memo), self._session, self.report)

    def __getattr__(self, name: str) -> Any:  # called only for what this class does not define
        return getattr(self.__dict__["_model"], name)

    def to(self, *args: Any, **kwargs: Any) -> OnnxEngineModel:
        self._model.to(*args, **kwargs)
        return self

    def eval(self) -> OnnxEngineModel:
        self._model.eval()
        return self

    def __call__(
        self, x: torch.Tensor, state: State | None = None, *, cond: torch.Tensor | None = None, reset: Any = None
    ) -> tuple[torch.Tensor, State]:
        model = self._model
        model.rnn.check_input(x, state)
        batch = x.shape[0]
        if state is None:
            state = model.initial_state(batch, cond)
        elif reset is not None:  # the torch model's own semantics for the rows that start afresh
            has_initial = model.encoder is not None or model.learned is not None
            fresh = model.initial_state(batch, cond) if has_initial else None
            state = state.reset(reset, to=fresh)
        feeds = {"x": np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)}
        for name, t in zip(self._names, state.tensors(), strict=True):
            feeds[name] = np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)
        feeds["reset"] = np.zeros(batch, bool)
        if self._cond:
            feeds["cond"] = np.zeros((batch, self._cond), np.float32)  # unread: no row resets here
        out = self._session.run(self._outputs, feeds)
        layers, k = [], 1
        for ls in model.state_spec.layers:
            h = torch.from_numpy(out[k])
            c = torch.from_numpy(out[k + 1]) if ls.has_c else None
            k += 2 if ls.has_c else 1
            layers.append(LayerState(h, c))
        return torch.from_numpy(out[0]), State._trusted(model.state_spec, layers)


def onnx_engine(model: Any, threads: int | None = None) -> OnnxEngineModel:
    """``model`` (a SequenceModel, eval mode) exported, checked against itself, and loaded in onnxruntime."""
    from hiddenstate.interop.onnx import _describe, _session, model_bytes, verify_bytes

    model = model.to("cpu", torch.float32).eval()
    data, plan = model_bytes(model, units="normalised", reset=True)
    report = _describe(data, plan)
    verify_bytes(data, plan, model, report)
    return OnnxEngineModel(model, _session(data, threads or torch.get_num_threads()), report)

"""ONNX export with the state as explicit graph inputs and outputs, and a torch-free runner.

onnxruntime keeps no state between calls, so the graph takes it in and hands it back::

    inputs   x                       (batch, steps, input_size)   float32
             state_in.layers.{i}.h   (batch, hidden_i)            float32, one per state tensor
             state_in.layers.{i}.c   (batch, hidden_i)            LSTM layers only
             reset                   (batch,)                     bool: rows that start afresh
             cond                    (batch, cond_size)           models with a state encoder
    outputs  y                       (batch, steps, output_size)  (batch, output_size) for last-step models
             state_out.layers.{i}.h / .c

Feed each call's ``state_out.*`` back as the next call's ``state_in.*`` and a stream runs on in
chunks of any length, exactly as the model does. Where ``reset`` is true the row starts from the
model's initial state (zeros, the learned one, or the state encoder's from ``cond``) through
``Where(reset, initial, state_in)``, so whatever ``state_in`` holds there (uninitialised memory,
NaN) never reaches the result.

:func:`export_onnx` proves the file before writing it: onnxruntime against the model on random
data in chunks of 1, 7, 96, 3 and 50 steps chained through the state, at batch 1 and batch 7.
:class:`OnnxStream` runs an exported file with onnxruntime and numpy only.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiddenstate._extras import require
from hiddenstate.errors import ConfigError, ExportError
from hiddenstate.interop._onnx_stream import FORMAT, OnnxStream, _session

__all__ = ["CHUNKS", "DEFAULT_OPSET", "TOLERANCE", "ExportReport", "OnnxStream", "export_onnx", "model_bytes"]

DEFAULT_OPSET = 17
#: The chunk lengths the export check streams through, chained by the state.
CHUNKS = (1, 7, 96, 3, 50)
VERIFY_BATCHES = (1, 7)
TOLERANCE = 1e-5
#: The first onnxscript release whose GRU export sets linear_before_reset=1 (torch's GRU).
ONNXSCRIPT_GRU_FIXED = (0, 7, 1)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime matched the model.

    ``max_abs_diff`` maps ``y`` and each ``state_out.*`` to the largest difference over every
    check (``y`` in normalised units: divided by each target's scale when scalers are folded in);
    ``checks`` lists each batch size's chunks and figure.
    """

    path: Path | None
    opset: int
    units: str
    inputs: dict[str, list[str | int]]
    outputs: dict[str, list[str | int]]
    metadata: dict[str, str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=float("nan"))

    def summary(self) -> str:
        where = self.path if self.path is not None else "(not written)"
        check = f"max |onnxruntime - model| {self.worst:.2e}" if self.verified else "not verified"
        return f"{where}: opset {self.opset}, units {self.units}, {check}"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def onnxscript_version() -> str:
    """The installed onnxscript's version (tests replace this to check the GRU refusal)."""
    return _version("onnxscript")


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))  # "0rc1" is 0, not 01: before the release
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _refuse_buggy_gru(cells: Sequence[Any]) -> None:
    for i, cell in enumerate(cells):
        if cell[0] != "gru":
            continue
        have = onnxscript_version()
        if have == "absent" or _release(have) < ONNXSCRIPT_GRU_FIXED:
            raise ConfigError(
                f"layer {i} (gru): onnxscript {have} exports GRU with linear_before_reset=0, wrong by up to 0.1; "
                "pip install 'onnxscript>=0.7.1'"
            )


def check_opset(opset: Any) -> int:
    """``opset`` (None: :data:`DEFAULT_OPSET`) when the installed onnx knows it and it is 14 or later."""
    onnx = require("onnx", "onnx")
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not 14 <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(f"opset {opset!r}: expected an int from 14 to {onnx.defs.onnx_opset_version()}")
    return int(opset)


def model_bytes(
    model_or_run: Any,
    *,
    opset: int | None = None,
    units: str = "original",
    reset: bool = True,
    reset_dims: tuple[str | int, ...] = ("batch",),
) -> tuple[bytes, Any]:
    """The serialised ONNX model and its plan, unchecked (:func:`export_onnx` checks and writes)."""
    onnx = require("onnx", "onnx")
    import torch

    import hiddenstate
    from hiddenstate.interop._onnx_graph import build_graph
    from hiddenstate.interop._onnx_plan import make_plan, source_of

    source = source_of(model_or_run)
    opset = check_opset(opset)
    plan = make_plan(source, units=units, reset=reset)
    plan.reset_dims = reset_dims
    _refuse_buggy_gru(plan.cells)
    spec = source.model.rnn.state_spec
    folded = plan.x_shift is not None
    plan.metadata = {
        "hiddenstate.format": FORMAT,
        "hiddenstate.state_names": json.dumps(list(spec.names)),
        "hiddenstate.state_shapes": json.dumps({n: ["batch", h] for n, h in plan.state_names()}),
        "hiddenstate.spec": json.dumps(spec.to_json()),
        "hiddenstate.fingerprint": spec.fingerprint(),
        "hiddenstate.units": "original" if folded else "normalised",
        "hiddenstate.inputs": json.dumps(list(source.inputs)),
        "hiddenstate.targets": json.dumps(list(source.targets)),
        "hiddenstate.reset": "true" if reset else "false",
        "hiddenstate.initial_state": "cond" if plan.encoder is not None else ("learned" if plan.initial else "zeros"),
        "hiddenstate.cond_size": str(plan.cond_size),
        "hiddenstate.last_step": "true" if plan.last_step else "false",
        "hiddenstate.version": hiddenstate.__version__,
        "torch.version": torch.__version__,
        "onnxscript.version": onnxscript_version(),
        "onnx.version": onnx.__version__,
        "opset": str(opset),
    }
    proto = build_graph(plan, opset)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(), plan


def export_onnx(
    model_or_run: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    units: str = "original",
    verify: bool = True,
    reset: bool = True,
) -> ExportReport:
    """Write ``model_or_run`` as an ONNX file whose state is explicit inputs and outputs.

    ``model_or_run`` is a SequenceModel, a loaded Run or a run directory. ``units="original"``
    folds a run's scalers into the graph (``x`` and ``y`` in the data's units);
    ``"normalised"`` leaves them out. The state tensors are always the model's own. ``reset``
    adds the ``reset`` input (required for a state-encoder model). With ``verify`` (the
    default) the graph is run in onnxruntime against the model first and nothing is written
    when any output or state differs by more than 1e-5; the :class:`ExportError` names the
    tensor, the check, the step and the row.

    >>> import tempfile, hiddenstate as hs
    >>> model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.GRU(4)])
    >>> report = hs.export_onnx(model, tempfile.mkdtemp() + "/model.onnx")
    >>> report.worst < 1e-5, sorted(report.outputs)[:2]
    (True, ['state_out.layers.0.c', 'state_out.layers.0.h'])
    """
    started = time.perf_counter()
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{target}: is a folder; give the path of the .onnx file to write")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{parent}: the output folder is a file")
    from hiddenstate.interop._onnx_plan import source_of

    source = source_of(model_or_run)
    data, plan = model_bytes(source, opset=opset, units=units, reset=reset)
    report = _describe(data, plan)
    if verify:
        verify_bytes(data, plan, source.model, report)
    from hiddenstate.runs.files import atomic_write

    parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data)
    report.path = target
    report.seconds = time.perf_counter() - started
    return report


def _describe(data: bytes, plan: Any) -> ExportReport:
    onnx = require("onnx", "onnx")
    proto = onnx.load_from_string(data)

    def dims(vi: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return ExportReport(
        path=None,
        opset=int(plan.metadata["opset"]),
        units=plan.metadata["hiddenstate.units"],
        inputs={vi.name: dims(vi) for vi in proto.graph.input},
        outputs={vi.name: dims(vi) for vi in proto.graph.output},
        metadata=dict(plan.metadata),
    )


def verify_bytes(data: bytes, plan: Any, model: Any, report: ExportReport, seed: int = 0) -> None:
    """Stream random data through onnxruntime and the model in chained chunks; fill ``report``
    or raise :class:`ExportError` at the first tensor past :data:`TOLERANCE`."""
    import torch

    session = _session(data)
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:  # the reference runs as the graph does
        import copy

        model = copy.deepcopy(model).to("cpu", torch.float32)
    names = [n for n, _ in plan.state_names()]
    y_scale = np.asarray(plan.y_shift[1], np.float64) if plan.y_shift is not None else 1.0
    worst: dict[str, float] = {"y": 0.0, **{f"state_out.{n}": 0.0 for n in names}}
    was_training = model.training
    model.eval()
    try:
        for batch in VERIFY_BATCHES:
            rng = np.random.default_rng(seed + batch)
            feeds_state = {
                n: np.full((batch, h), np.nan if plan.reset else 0.0, np.float32) for n, h in plan.state_names()
            }
            state = None
            if not plan.reset:  # no reset input: both sides start from the model's initial state
                with torch.no_grad():
                    state = model.initial_state(batch)
                feeds_state = {
                    n: t.detach().numpy().astype(np.float32) for n, t in zip(names, state.tensors(), strict=True)
                }
            cond = rng.standard_normal((batch, plan.cond_size)).astype(np.float32) if plan.encoder is not None else None
            if cond is not None and plan.cond_shift is not None:
                cond = (cond * plan.cond_shift[1] + plan.cond_shift[0]).astype(np.float32)
            batch_worst = 0.0
            history: list[tuple[np.ndarray, np.ndarray]] = []
            for k, steps in enumerate(CHUNKS):
                x = rng.standard_normal((batch, steps, plan.input_size)).astype(np.float32)
                if plan.x_shift is not None:
                    x = (x * plan.x_shift[1] + plan.x_shift[0]).astype(np.float32)
                # every row starts afresh in the first chunk (from NaN state_in), row 0 again in the fourth
                reset = np.zeros(batch, bool)
                if k == 0:
                    reset[:] = True
                elif k == 3:
                    reset[0] = True
                feeds = {"x": x, **{f"state_in.{n}": v for n, v in feeds_state.items()}}
                if plan.reset:
                    feeds["reset"] = reset.reshape(_reset_shape(plan, batch))
                if cond is not None:
                    feeds["cond"] = cond
                got = session.run(None, feeds)
                history.append((x, reset))
                want_y, state = _reference(model, plan, x, state, cond, reset if plan.reset else None)
                pairs = [("y", got[0], want_y)] + [
                    (f"state_out.{n}", got[1 + j], t.numpy())
                    for j, (n, t) in enumerate(zip(names, state.tensors(), strict=True))
                ]
                for name, a, b in pairs:
                    if a.shape != b.shape:
                        raise ExportError(
                            f"verification: {name} has shape {a.shape} in onnxruntime and {b.shape} in the model "
                            f"(batch {batch}, chunk {k} of {steps} steps); no file written"
                        )
                    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                    if name == "y":
                        diff = diff / y_scale
                    if not np.isfinite(diff).all():
                        diff = np.where(np.isfinite(diff), diff, np.inf)
                    top = float(diff.max(initial=0.0))
                    if top > TOLERANCE:
                        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
                        where = f"row {idx[0]}" + (f", step {idx[1]}" if name == "y" and diff.ndim == 3 else "")
                        drift = _float64_drift(model, plan, history, cond, name, b, y_scale)
                        raise ExportError(
                            f"verification: {name} differs by {top:.3g} > {TOLERANCE:g} at batch {batch}, chunk {k} "
                            f"({steps} steps), {where}, unit {idx[-1]}: onnxruntime {float(a[idx]):.7g} vs model "
                            f"{float(b[idx]):.7g}; {_explain(drift, top)}; no file written"
                        )
                    worst[name] = max(worst[name], top)
                    batch_worst = max(batch_worst, top)
                feeds_state = {n: got[1 + j] for j, n in enumerate(names)}
            report.checks.append({"batch": batch, "chunks": list(CHUNKS), "max_abs_diff": batch_worst})
    finally:
        model.train(was_training)
    report.max_abs_diff = worst
    report.verified = True


def _float64_drift(
    model: Any, plan: Any, history: list[tuple[np.ndarray, np.ndarray]], cond: Any, name: str, want: Any, scale: Any
) -> float:
    """How far the model itself moves on ``name`` between float32 and float64 over the same chunks."""
    import copy

    import torch

    wide = copy.deepcopy(model).to(torch.float64)
    state, out = None, None
    for x, reset in history:
        out, state = _reference(wide, plan, x, state, cond, reset if plan.reset else None)
    if name == "y":
        return float((np.abs(np.asarray(out, np.float64) - want) / scale).max())
    tensor = dict(zip(_state_out_names(plan), state.tensors(), strict=True))[name]
    return float(np.abs(tensor.numpy() - want).max())


def _state_out_names(plan: Any) -> list[str]:
    return [f"state_out.{n}" for n, _ in plan.state_names()]


def _explain(drift: float, diff: float) -> str:
    if drift >= 0.1 * diff:
        return (
            f"the model itself moves by {drift:.3g} between float32 and float64 on the same data, so its dynamics "
            "amplify rounding and no float32 runtime can match it to the tolerance (check it yourself and export "
            "with verify=False)"
        )
    return f"the model's float32 and float64 agree to {drift:.1g} here, so the graph computes something else"


def _reset_shape(plan: Any, batch: int) -> tuple[int, ...]:
    return (batch,) if len(plan.reset_dims) == 1 else (batch, 1)


def _reference(model: Any, plan: Any, x: np.ndarray, state: Any, cond: Any, reset: Any) -> tuple[np.ndarray, Any]:
    """The model's ``y`` (in the graph's units) and state for one chunk, from ``state``."""
    import torch

    dtype = next(model.parameters()).dtype
    xt = torch.from_numpy(x)
    if plan.x_shift is not None:  # the graph's arithmetic, in float32
        xt = (xt - torch.from_numpy(plan.x_shift[0].astype(np.float32))) / torch.from_numpy(
            plan.x_shift[1].astype(np.float32)
        )
    xt = xt.to(dtype)
    ct = None
    if cond is not None:
        ct = torch.from_numpy(cond)
        if plan.cond_shift is not None:
            ct = (ct - torch.from_numpy(plan.cond_shift[0].astype(np.float32))) / torch.from_numpy(
                plan.cond_shift[1].astype(np.float32)
            )
        ct = ct.to(dtype)
    with torch.no_grad():
        if state is None:  # the first chunk: every row resets, as in the graph
            y, state = model(xt, None, cond=ct)
        else:
            mask = None if reset is None or not reset.any() else torch.from_numpy(reset)
            y, state = model(xt, state, cond=ct, reset=mask)
        if plan.y_shift is not None:
            y = y * torch.from_numpy(plan.y_shift[1].astype(np.float32)) + torch.from_numpy(
                plan.y_shift[0].astype(np.float32)
            )
    return y.numpy(), state

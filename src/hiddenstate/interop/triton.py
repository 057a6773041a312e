"""A Triton Inference Server model repository whose sequence batcher keeps each sequence's state.

::

    OUT/NAME/config.pbtxt        backend onnxruntime, sequence_batching (Oldest), implicit state
    OUT/NAME/1/model.onnx        the graph of :func:`hiddenstate.interop.onnx.export_onnx`
    OUT/NAME/initial_state/      raw float32 files of a learned initial state (when there is one)

Triton's sequence batcher feeds each ``state_out.*`` back as the matching ``state_in.*`` for the
next request of the same sequence. Two of its rules decide the names written here:

- it pairs state inputs with state outputs by their positions in sorted-name order, so the
  ``state_in.layers.{i}.{h,c}`` / ``state_out.layers.{i}.{h,c}`` names must sort alike (checked
  before anything is written);
- the first request of a sequence gets uninitialised memory unless ``initial_state`` is set; it
  is set (zeros, or the learned state as a data file), and the graph's ``reset`` input, wired to
  the batcher's START control, picks the model's own initial state there anyway.

Triton batches control inputs as ``(batch, 1)``, so this graph's ``reset`` is ``(batch, 1)``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hiddenstate.errors import ConfigError, ExportError

__all__ = ["check_model_name", "check_state_pairing", "write_triton_repository"]

# not "." or "..": the name is a folder under ``out``, and those two would write beside it
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_state_pairing(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(input, output)`` pairs Triton will make from the state names in sorted order;
    raises ExportError unless they are the intended ``pairs``."""
    made = list(zip(sorted(a for a, _ in pairs), sorted(b for _, b in pairs), strict=True))
    intended = dict(pairs)
    for a, b in made:
        if intended[a] != b:
            raise ExportError(
                f"Triton would pair state input {a} with output {b}, not {intended[a]}: "
                "the state names do not sort alike"
            )
    return made


def check_model_name(name: str) -> str:
    """``name`` when it can be a Triton model's folder under the repository; ConfigError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"model name {name!r}: use letters, digits, '_', '-' and '.' only, starting with a letter, digit or '_'"
        )
    return name


def _state_block(name: str, hidden: int, initial: np.ndarray | None) -> str:
    if initial is None:
        init = f'initial_state {{ data_type: TYPE_FP32 dims: [ {hidden} ] zero_data: true name: "zeros" }}'
    else:
        init = f'initial_state {{ data_type: TYPE_FP32 dims: [ {hidden} ] data_file: "{name}" name: "learned" }}'
    return (
        "  state {\n"
        f'    input_name: "state_in.{name}"\n'
        f'    output_name: "state_out.{name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {hidden} ]\n"
        f"    {init}\n"
        "  }\n"
    )


def write_triton_repository(
    model_or_run: Any,
    out: str | os.PathLike[str],
    name: str = "hiddenstate",
    *,
    units: str = "original",
    opset: int | None = None,
    max_batch_size: int = 64,
    verify: bool = True,
) -> Any:
    """Write ``out/name`` as a Triton model repository entry; returns the ExportReport.

    The graph is checked in onnxruntime first exactly as :func:`~hiddenstate.interop.onnx.export_onnx`
    does (with its ``(batch, 1)`` reset); nothing is written when that fails. The folder is
    written whole, then renamed into place, so a re-export replaces it all at once (files of the
    old export that the new one lacks go); a folder holding anything else is refused.
    """
    from hiddenstate.interop._onnx_plan import source_of
    from hiddenstate.interop.onnx import _describe, model_bytes, verify_bytes

    check_model_name(name)
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or not 1 <= max_batch_size < 2**31:
        raise ConfigError(
            f"max_batch_size must be an int from 1 to 2147483647 (Triton's int32), got {max_batch_size!r}"
        )
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: the output folder is a file")
    source = source_of(model_or_run)
    data, plan = model_bytes(source, opset=opset, units=units, reset=True, reset_dims=("batch", 1))
    report = _describe(data, plan)
    if verify:
        verify_bytes(data, plan, source.model, report)
    states = plan.state_names()
    check_state_pairing([(f"state_in.{n}", f"state_out.{n}") for n, _ in states])

    y_dims = f"[ {plan.output_size} ]" if plan.last_step else f"[ -1, {plan.output_size} ]"
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        f'input [\n  {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {plan.input_size} ] }}'
        + (
            f',\n  {{ name: "cond" data_type: TYPE_FP32 dims: [ {plan.cond_size} ] }}'
            if plan.encoder is not None
            else ""
        )
        + "\n]",
        f'output [\n  {{ name: "y" data_type: TYPE_FP32 dims: {y_dims} }}\n]',
        "sequence_batching {",
        "  max_sequence_idle_microseconds: 60000000",
        f"  oldest {{ max_candidate_sequences: {max_batch_size} max_queue_delay_microseconds: 100 }}",
        "  control_input [",
        '    { name: "reset" control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] } ] }',
        "  ]",
    ]
    text = "\n".join(lines) + "\n"
    for n, hidden in states:
        text += _state_block(n, hidden, None if plan.initial is None else plan.initial.get(n))
    text += "}\n" + "instance_group [ { kind: KIND_CPU count: 1 } ]\n"

    files = {"1/model.onnx": data, "config.pbtxt": text.encode()}
    for n, value in (plan.initial or {}).items():
        files[f"initial_state/{n}"] = np.asarray(value, np.float32).reshape(-1).tobytes()
    folder = root / name
    _commit_entry(folder, files)
    report.path = folder / "1" / "model.onnx"
    return report


#: what an export writes in a model's folder: the only entries a re-export may replace
_OURS = ("config.pbtxt", "1", "initial_state")


def _foreign_entries(folder: Path) -> list[str]:
    """The entries of an existing model folder that an export does not write (another version,
    a file of the user's); a re-export replaces the folder whole, so it refuses to drop them."""
    found = []
    for entry in sorted(folder.iterdir()):
        folder_expected = entry.name != "config.pbtxt"
        if entry.name not in _OURS or entry.is_dir() != folder_expected:
            found.append(entry.name)
        elif entry.name == "1":
            found += [f"1/{e.name}" for e in sorted(entry.iterdir()) if e.name != "model.onnx" or e.is_dir()]
        elif entry.name == "initial_state":
            found += [f"initial_state/{e.name}" for e in sorted(entry.iterdir()) if e.is_dir()]
    return found


def _commit_entry(folder: Path, files: dict[str, bytes]) -> None:
    """Write the model folder whole: every file, fsynced, into a temp folder beside it, then one
    rename into place (the old folder moved aside first, then removed). A crash or a failure
    leaves the old entry or the new one, never a new model.onnx beside an old config.pbtxt or
    an old initial state; the files of a learned initial state that is gone go with it."""
    from hiddenstate.runs.files import fsync_dir, make_dirs, write_fsynced

    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{folder}: is a file, not a model folder")
        foreign = _foreign_entries(folder)
        if foreign:
            raise ConfigError(
                f"{folder} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which an export "
                "does not write and a re-export would remove; move them away or choose another name"
            )
    root = folder.parent
    make_dirs(root)
    for stale in [*root.glob(f".{folder.name}.*.tmp"), *root.glob(f".{folder.name}.*.old")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp, old = root / f".{folder.name}.{token}.tmp", root / f".{folder.name}.{token}.old"
    moved = False
    try:
        tmp.mkdir()
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(exist_ok=True)
            write_fsynced(path, data)
        for sub in {tmp} | {(tmp / rel).parent for rel in files}:  # tmp's entries and its subfolders'
            fsync_dir(sub)
        if folder.exists():
            os.rename(folder, old)
            moved = True
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not folder.exists():
            os.rename(old, folder)  # the old entry back in place
        raise
    fsync_dir(root)
    if moved:
        shutil.rmtree(old, ignore_errors=True)

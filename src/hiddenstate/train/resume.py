"""What a resumed run may change: the one comparison behind ``fit(resume=True)`` and ``train --resume``.

A resumed run must continue the training its checkpoint recorded, so every setting that changes
what training computes has to match: the learning rate and its schedule, the loss, the
optimizer, clipping, the state policy, ``detach_every``, the seed, the backend, the precision,
the batch layout and the model. Settings that only say where or how fast it runs
(:data:`MAY_CHANGE`) may change, and :data:`MAY_GROW` may grow: more epochs, more patience
(``None``, no early stopping, is the most). With the cosine schedule the learning rate of every
epoch depends on ``epochs``, so there ``epochs`` must match too.

:func:`changes` is the comparison; the Trainer calls :func:`check_resume` with the checkpoint
and the command line calls :func:`changes` with its saved settings, so both refuse the same way.

>>> from hiddenstate.train.config import TrainConfig
>>> changes(TrainConfig(lr=1e-3).to_json(), TrainConfig(lr=1e-2, epochs=20).to_json())
[Change(field='lr', saved=0.001, given=0.01)]
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hiddenstate.errors import CheckpointError, ConfigError
from hiddenstate.train.config import TrainConfig

__all__ = ["MAY_CHANGE", "MAY_GROW", "Change", "batch_layout", "changes", "check_history", "check_resume"]

#: TrainConfig fields that do not change what training computes: where and how fast it runs,
#: what it shows, how many checkpoints it keeps.
MAY_CHANGE = frozenset({"device", "threads", "progress", "keep_checkpoints", "max_minutes"})
#: TrainConfig fields that may grow when a run is resumed.
MAY_GROW = frozenset({"epochs", "patience"})

_LAYOUT_ATTRIBUTES = ("num_lanes", "steps", "window", "stride", "shuffle", "seed")


@dataclass(frozen=True)
class Change:
    """A setting whose value differs from the saved one."""

    field: str
    saved: Any
    given: Any


def _grows(saved: Any, given: Any) -> bool:
    if given is None:  # no limit: the most there is
        return True
    return isinstance(saved, int) and isinstance(given, int) and given >= saved


def changes(
    saved: Mapping[str, Any],
    given: Mapping[str, Any],
    *,
    names: Iterable[str] | None = None,
    may_change: Collection[str] = MAY_CHANGE,
    may_grow: Collection[str] = MAY_GROW,
) -> list[Change]:
    """The settings among ``names`` (default: every key of either) whose ``given`` value differs
    from the ``saved`` one, except ``may_change`` and the ``may_grow`` that grew."""
    order = list(names) if names is not None else [*given, *(k for k in saved if k not in given)]
    found = []
    for name in order:
        was, now = saved.get(name), given.get(name)
        if name in may_change or (name in may_grow and _grows(was, now)) or was == now:
            continue
        found.append(Change(name, was, now))
    return found


def batch_layout(batches: Any) -> dict[str, Any]:
    """What of ``batches`` shapes the training: its kind, lanes, steps (or window), stride,
    shuffling and seed where it has them, and the batches per epoch."""
    layout: dict[str, Any] = {"kind": type(batches).__name__}
    for name in _LAYOUT_ATTRIBUTES:
        value = getattr(batches, name, None)
        if isinstance(value, bool | int | float | str):
            layout[name] = value
    try:
        layout["batches"] = len(batches)
    except TypeError:  # an iterable without a length
        pass
    return layout


def check_resume(
    checkpoint: Any, config: TrainConfig, model: nn.Module, batches: Any, optimizer: torch.optim.Optimizer
) -> None:
    """Refuse to resume ``checkpoint`` (a :class:`~hiddenstate.runs.run.Checkpoint`) with another
    training: ConfigError naming the first changed field and both values. The checkpoint's
    optimizer state must also be one ``optimizer`` can take (else CheckpointError)."""
    listing = Path(checkpoint.path) / "checkpoint.json"
    try:
        saved = TrainConfig.from_json(checkpoint.meta.get("train_config"))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{listing}: field 'train_config': {e}") from None
    grow = MAY_GROW if saved.schedule != "cosine" else MAY_GROW - {"epochs"}
    found = changes(saved.to_json(), config.to_json(), may_grow=grow)
    if not found and checkpoint.meta.get("model") != model.config():  # type: ignore[operator]
        found = [Change("model", checkpoint.meta.get("model"), model.config())]  # type: ignore[operator]
    layout = checkpoint.trainer.get("layout")
    if not found and layout is not None and layout != batch_layout(batches):
        found = [Change("batch layout", layout, batch_layout(batches))]
    if found:
        change = found[0]
        why = {
            "epochs": "; with the cosine schedule every epoch's learning rate depends on epochs"
            if saved.schedule == "cosine"
            else "; epochs may only grow",
            "patience": "; patience may only grow",
        }.get(change.field, "")
        raise ConfigError(
            f"{listing}: cannot resume with {change.field} {change.given!r}: the checkpoint was trained with "
            f"{change.saved!r}{why}; a resumed run continues the same training (only epochs and patience may grow)"
        )
    _check_optimizer(checkpoint.optimizer_state, optimizer, listing)  # the same config: a crafted file if not


def _same(saved: Any, now: Any) -> bool:
    if isinstance(now, tuple | list):
        return isinstance(saved, tuple | list) and len(saved) == len(now) and all(map(_same, saved, now))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (saved, now))
    return (numbers or type(saved) is type(now)) and saved == now  # 0 and 0.0 alike; True and 1 not


# set by the Trainer each epoch, or how the step is computed rather than what it computes
_NOT_COMPARED = frozenset({"params", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable"})


def _check_optimizer(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, listing: Path) -> None:
    """The checkpoint's param groups, as ``load_state_dict`` would put them in place (tried on a
    throwaway optimizer of the same kind), must keep every hyperparameter of ``optimizer``'s but
    the learning rate, which the Trainer sets each epoch; for Adam and AdamW, each parameter's
    state must hold exactly the tensors they keep."""
    current = optimizer.param_groups
    dummies = [{**g, "params": [torch.zeros(1, requires_grad=True) for _ in g["params"]]} for g in current]
    probe = cast(Any, type(optimizer))(dummies)  # the same kind, its defaults from each group
    try:
        probe.load_state_dict({"state": {}, "param_groups": [dict(g) for g in saved["param_groups"]]})
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"{listing}: field 'optimizer.param_groups': does not fit the optimizer: {detail}"
        ) from None
    for i, (group, now) in enumerate(zip(probe.param_groups, current, strict=True)):
        where = f"{listing}: field 'optimizer.param_groups[{i}]"
        lr = group.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise CheckpointError(f"{where}.lr': expected a number > 0, got {lr!r:.40}")
        for key, value in now.items():
            if key in _NOT_COMPARED:
                continue
            if key not in group or not _same(group[key], value):
                got = repr(group[key])[:40] if key in group else "nothing"
                raise CheckpointError(f"{where}.{key}': {got} differs from the optimizer's {value!r}")
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return
    keep = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if current[0].get("amsgrad") else set())
    count = sum(len(g["params"]) for g in current)
    for index, entries in saved["state"].items():
        names = set(entries)
        if not 0 <= index < count or names != keep or not all(isinstance(v, torch.Tensor) for v in entries.values()):
            raise CheckpointError(
                f"{listing}: field 'optimizer.state.{index}': expected the tensors {', '.join(sorted(keep))} "
                f"of one of {count} parameters, got {', '.join(sorted(map(str, names))) or 'nothing'}"
            )
        if entries["step"].dim() != 0:
            raise CheckpointError(f"{listing}: field 'optimizer.state.{index}.step': expected a scalar tensor")


_ROW = {
    "epoch": "an int",
    "train_loss": "a number",
    "val_loss": "a number or null",
    "lr": "a number",
    "seconds": "a number",
    "sample_steps_per_s": "a number",
}
_HISTORY = {"rows", "best_epoch", "best_val_loss", "bad_epochs", "stopped_early"}


def _ok(kind: str, value: Any) -> bool:
    if kind == "an int":
        return isinstance(value, int) and not isinstance(value, bool)
    if value is None:
        return kind.endswith("or null")
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_history(data: Any, epoch: int, listing: Path) -> None:
    """The Trainer's ``History.to_json()`` of ``epoch`` epochs as a checkpoint holds it."""

    def fail(name: str, expected: str, value: Any) -> CheckpointError:
        return CheckpointError(
            f"{listing}: field 'trainer.history{name}': expected {expected}, got {type(value).__name__} {value!r:.40}"
        )

    if not isinstance(data, dict) or set(data) != _HISTORY:
        raise fail("", f"an object with {', '.join(sorted(_HISTORY))}", data)
    rows = data["rows"]
    if not isinstance(rows, list) or len(rows) != epoch or not all(isinstance(r, dict) for r in rows):
        raise fail(".rows", f"a list of {epoch} row objects, one per epoch", rows)
    for i, row in enumerate(rows):
        for key, kind in _ROW.items():
            if key not in row or not _ok(kind, row[key]):
                raise fail(f".rows[{i}].{key}", kind, row.get(key, "nothing"))
    for key, kind in (
        ("best_epoch", "an int or null"),
        ("best_val_loss", "a number or null"),
        ("bad_epochs", "an int"),
    ):
        if not _ok(kind, data[key]) or (kind.startswith("an int") and isinstance(data[key], float)):
            raise fail(f".{key}", kind, data[key])
    if not isinstance(data["stopped_early"], bool):
        raise fail(".stopped_early", "true or false", data["stopped_early"])

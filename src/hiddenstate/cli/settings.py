"""RunSettings: the data and model settings of a run trained from the command line, frozen.

``hiddenstate train`` builds one from its flags (whose defaults are read from here, so the two
cannot drift), writes it to ``RUN_DIR/train_args.json`` before training (so ``--resume`` can
check it) and keeps it in the manifest's ``extra["settings"]`` (so ``evaluate``, ``forecast``
and ``plot`` rebuild the same data).

>>> s = RunSettings(steps=24)
>>> RunSettings.from_json(s.to_json()) == s
True
>>> RunSettings.from_json({"steps": "24"})
Traceback (most recent call last):
...
hiddenstate.errors.ConfigError: run settings: steps: expected an int in [1, 10000000], got '24'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from hiddenstate.data.frames import FILLS, LAYOUTS
from hiddenstate.errors import ConfigError, HiddenStateError
from hiddenstate.likelihood import LIKELIHOODS
from hiddenstate.state import StateSpec
from hiddenstate.train.config import LOSSES, POLICIES

__all__ = ["RunSettings"]

_LAYERS = ({"cell": "lstm", "hidden_size": 32}, {"cell": "lstm", "hidden_size": 32})


@dataclass(frozen=True)
class RunSettings:
    """Where the data comes from, how it is split and laid out, and the model's shape.

    ``layers`` is ``StateSpec.to_json()``; ``split`` is three train/val/test fractions or
    ``"ett"`` (ETT's standard borders); ``inputs``/``targets`` default to every column (the
    targets to the inputs) until the data is read, then hold the resolved names.
    """

    data: str | None = None
    time_col: str | None = None
    id_col: str = "unique_id"
    ds_col: str = "ds"
    layout: str = "auto"
    fill: str = "error"
    inputs: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    split: tuple[float, ...] | str = (0.7, 0.1, 0.2)
    synthetic_steps: int = 5376
    synthetic_seed: int = 0
    layers: tuple[dict[str, Any], ...] = field(default=_LAYERS)
    dropout: float = 0.0
    steps: int = 48
    batch_size: int = 16
    state_policy: str = "carry"
    horizon: int = 96
    seed: int = 0
    lr: float = 3e-3
    loss: str = "mse"
    likelihood: str | None = None
    plot_steps: int = 384

    @property
    def spec(self) -> StateSpec:
        """The model's state spec, from ``layers``."""
        return StateSpec.from_json(list(self.layers))

    def replace(self, **changes: Any) -> RunSettings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("inputs", "targets", "split", "layers"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_json(cls, data: Any) -> RunSettings:
        """From ``to_json()`` output (fields left out take their defaults); ConfigError naming the
        field for an unknown field or a value of the wrong type."""
        if not isinstance(data, dict):
            raise ConfigError(f"run settings: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"run settings: unknown field {unknown[0]!r}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            values[name] = _coerce(name, value)
        return cls(**values)


_INTS = ("synthetic_steps", "steps", "batch_size", "horizon", "plot_steps")
_SEEDS = ("synthetic_seed", "seed")
_FLOATS = ("dropout", "lr")
_CHOICES = {"layout": LAYOUTS, "fill": FILLS, "state_policy": POLICIES, "loss": LOSSES}
_STRS = ("id_col", "ds_col")
_OPTIONAL_STRS = ("data", "time_col")
_OPTIONAL_CHOICES = {"likelihood": tuple(n for n in LIKELIHOODS if n != "negbin")}  # as the command line offers
#: The most rows (or steps) a saved setting may name: a crafted manifest could otherwise make
#: ``evaluate`` generate gigabytes of built-in data.
MAX_ROWS = 10_000_000


def _coerce(name: str, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"run settings: {name}: expected {expected}, got {value!r:.40}")

    if name in _INTS or name in _SEEDS:
        low, high = (0, 2**32 - 1) if name in _SEEDS else (1, MAX_ROWS)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(f"an int in [{low}, {high}]")
        return value
    if name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise bad("one of " + ", ".join(_CHOICES[name]))
        return value
    if name in _OPTIONAL_CHOICES:
        if value is not None and value not in _OPTIONAL_CHOICES[name]:
            raise bad("null or one of " + ", ".join(_OPTIONAL_CHOICES[name]))
        return value
    if name in _STRS or name in _OPTIONAL_STRS:
        if not isinstance(value, str) and not (value is None and name in _OPTIONAL_STRS):
            raise bad("a string")
        return value
    if name in ("inputs", "targets"):
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad("a list of column names")
        return tuple(value)
    if name == "split":
        if value == "ett":
            return value
        ok = isinstance(value, list | tuple) and len(value) == 3
        if not ok or not all(not isinstance(v, bool) and isinstance(v, int | float) and 0 <= v <= 1 for v in value):
            raise bad("three fractions or 'ett'")
        if sum(value) > 1 + 1e-9 or value[0] <= 0 or value[2] <= 0:
            raise bad("train, val and test fractions summing to at most 1, train and test above 0")
        return tuple(float(v) for v in value)
    if name == "layers":
        if not isinstance(value, list | tuple):
            raise bad("a list of layers")
        try:
            StateSpec.from_json(list(value))
        except HiddenStateError as e:
            raise ConfigError(f"run settings: layers: {e}") from None
        return tuple(value)
    raise bad("a known field")  # pragma: no cover - every field is handled above

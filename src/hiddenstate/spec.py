"""LayerSpec and StateSpec: the structure of a recurrent stack's state, without its tensors.

A :class:`StateSpec` lists each layer's cell kind and hidden size; it names every state tensor
(``layers.1.c``), gives Keras's ``state_size`` and a stable ``fingerprint()`` that run
directories, stores and exported graphs use to refuse a state of another structure. Pure: no
tensors, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hiddenstate.errors import ConfigError

__all__ = ["CELLS", "LayerSpec", "StateSpec"]

CELLS = ("lstm", "gru", "rnn")


@dataclass(frozen=True)
class LayerSpec:
    """One recurrent layer: its cell kind (``"lstm"``, ``"gru"``, ``"rnn"``) and hidden size.

    >>> LayerSpec("lstm", 8)
    LayerSpec(cell='lstm', hidden_size=8)
    """

    cell: str
    hidden_size: int

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell kind {self.cell!r}; expected one of {', '.join(CELLS)}")
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int):
            raise ConfigError(f"{self.cell} hidden_size must be an int, got {self.hidden_size!r}")
        if self.hidden_size < 1:
            raise ConfigError(f"{self.cell} hidden_size must be at least 1, got {self.hidden_size}")

    @property
    def has_c(self) -> bool:
        """True for LSTM, whose state has a cell tensor ``c`` beside ``h``."""
        return self.cell == "lstm"

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.has_c else ("h",)

    def describe(self, index: int) -> str:
        return f"layer {index} ({self.cell}, hidden {self.hidden_size})"


class StateSpec:
    """The structure of a stack's state: a cell kind and a hidden size per layer.

    ``layers`` takes :class:`LayerSpec` values or ``(cell, hidden_size)`` pairs.

    >>> spec = StateSpec([("lstm", 8), ("lstm", 16)])
    >>> spec.num_layers, spec.state_size
    (2, ((8, 8), (16, 16)))
    >>> StateSpec([("gru", 8), ("gru", 16)]).state_size
    ((8,), (16,))
    >>> spec == StateSpec([LayerSpec("lstm", 8), LayerSpec("lstm", 16)])
    True
    """

    __slots__ = ("_layers",)

    def __init__(self, layers: Iterable[LayerSpec | tuple[str, int]]) -> None:
        parsed: list[LayerSpec] = []
        for item in layers:
            if isinstance(item, LayerSpec):
                parsed.append(item)
            elif isinstance(item, Sequence) and len(item) == 2:
                parsed.append(LayerSpec(str(item[0]), item[1]))  # type: ignore[arg-type]
            else:
                raise ConfigError(f"a layer is a LayerSpec or a (cell, hidden_size) pair, got {item!r}")
        if not parsed:
            raise ConfigError("a StateSpec needs at least one layer")
        self._layers = tuple(parsed)

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self._layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def state_size(self) -> tuple[tuple[int, ...], ...]:
        """Keras-style sizes: ``(h, c)`` per LSTM layer, ``(h,)`` per GRU/RNN layer."""
        return tuple((ls.hidden_size,) * len(ls.tensor_names) for ls in self._layers)

    @property
    def names(self) -> tuple[str, ...]:
        """The stable tensor names used by :meth:`State.to_dict`: ``layers.0.h``, ``layers.0.c``, ..."""
        return tuple(f"layers.{i}.{t}" for i, ls in enumerate(self._layers) for t in ls.tensor_names)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"cell": ls.cell, "hidden_size": ls.hidden_size} for ls in self._layers]

    @classmethod
    def from_json(cls, data: Any) -> StateSpec:
        if not isinstance(data, list):
            raise ConfigError(f"a StateSpec in JSON is a list of layers, got {type(data).__name__}")
        try:
            return cls(LayerSpec(d["cell"], d["hidden_size"]) for d in data)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"a StateSpec layer in JSON needs 'cell' and 'hidden_size': {e}") from None

    def fingerprint(self) -> str:
        """A stable string that changes whenever the state's structure changes.

        >>> StateSpec([("lstm", 8)]).fingerprint()
        'hs1-lstm8-78f4361761'
        """
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canon.encode()).hexdigest()[:10]
        readable = "-".join(f"{ls.cell}{ls.hidden_size}" for ls in self._layers)
        if len(readable) > 48:
            readable = f"{self.num_layers}layers"
        return f"hs1-{readable}-{digest}"

    def describe(self) -> str:
        return "[" + ", ".join(f"{ls.cell} {ls.hidden_size}" for ls in self._layers) + "]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateSpec) and self._layers == other._layers

    def __hash__(self) -> int:
        return hash(self._layers)

    def __repr__(self) -> str:
        inner = ", ".join(f"({ls.cell!r}, {ls.hidden_size})" for ls in self._layers)
        return f"StateSpec([{inner}])"

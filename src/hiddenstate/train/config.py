"""TrainConfig: how to train, frozen, JSON-safe and checked when it is made.

The choices each field takes are declared here once (:data:`POLICIES`, :data:`LOSSES`, ...); the
CLI reads them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from hiddenstate.errors import ConfigError
from hiddenstate.train.precision import PRECISIONS

__all__ = ["BACKENDS", "LOSSES", "METRICS_COLUMNS", "OPTIMIZERS", "POLICIES", "PRECISIONS", "SCHEDULES", "TrainConfig"]

POLICIES = ("carry", "encode", "carry+encode", "zeros", "batch")
LOSSES = ("mse", "mae", "huber")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "step", "exponential")
BACKENDS = ("torch", "fused")
DISTRIBUTED = ("auto", "off")
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "sample_steps_per_s")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is JSON-safe and checked when the config is made.

    >>> TrainConfig(epochs=3, state_policy="carry").detach_every
    1
    >>> TrainConfig(loss="l2")
    Traceback (most recent call last):
    ...
    hiddenstate.errors.ConfigError: TrainConfig.loss: expected one of mse, mae, huber, got 'l2'
    """

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    loss: str = "mse"
    huber_delta: float = 1.0
    clip: float | None = 1.0  # max gradient norm; None turns clipping off
    schedule: str = "none"  # per-epoch learning rate: "none", "cosine" (to 0), "step" or "exponential"
    step_size: int = 10  # "step": multiply the lr by gamma every step_size epochs; "exponential": every
    # epoch after the first step_size (SegRNN's "type3" is step_size=3, gamma=0.9)
    gamma: float = 0.5
    patience: int | None = None  # early stopping: epochs without a better val loss
    restore_best: bool = True  # with validation, end with the best epoch's weights
    ema: float | None = None  # decay of an exponential moving average of the weights, updated after
    # every optimizer step; validation, the best epoch and the final weights then use the average
    state_policy: str = "carry"
    detach_every: int = 1  # chunks per backward/optimizer step and state detach
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    threads: int | None = None  # CPU threads; None: 1 for hidden sizes <= 32, else every core
    progress: bool = True  # a rich progress bar when stderr is a terminal
    keep_checkpoints: int | None = 3  # newest per-epoch checkpoints kept in run_dir; None: all
    backend: str = "torch"  # "torch" (cuDNN/oneDNN) or "fused" (CPU LSTM kernel, small models)
    precision: str = "fp32"  # "bf16" or "fp16": mixed precision on CUDA (weights stay float32)
    max_minutes: float | None = None  # wall-clock budget of fit(); when spent, the epoch ends early, training stops
    distributed: str = "auto"  # "auto": data-parallel when launched by torchrun; "off": never

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("loss", self.loss, LOSSES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("state_policy", self.state_policy, POLICIES)
        _choice("backend", self.backend, BACKENDS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("distributed", self.distributed, DISTRIBUTED)
        for name in ("epochs", "step_size", "detach_every"):
            _int(name, getattr(self, name), low=1)
        for name in ("patience", "threads", "keep_checkpoints"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), low=1)
        _int("seed", self.seed, low=0)
        for name in ("lr", "huber_delta"):
            _positive(name, getattr(self, name))
        for name in ("clip", "max_minutes"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not isinstance(self.weight_decay, int | float) or not self.weight_decay >= 0:
            raise ConfigError(f"TrainConfig.weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if self.ema is not None and (
            isinstance(self.ema, bool) or not isinstance(self.ema, int | float) or not 0 < self.ema < 1
        ):
            raise ConfigError(f"TrainConfig.ema: expected None or a decay in (0, 1), such as 0.995; got {self.ema!r}")
        if not isinstance(self.gamma, int | float) or not 0 < self.gamma <= 1:
            raise ConfigError(f"TrainConfig.gamma: expected a number in (0, 1], got {self.gamma!r}")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"TrainConfig.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for name in ("restore_best", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TrainConfig.{name}: expected True or False, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"TrainConfig.from_json: expected a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"TrainConfig.from_json: unknown field {unknown[0]!r}")
        return cls(**data)


def _choice(name: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"TrainConfig.{name}: expected one of {', '.join(options)}, got {value!r}")


def _int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"TrainConfig.{name}: expected an int >= {low}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"TrainConfig.{name}: expected a number > 0, got {value!r}")

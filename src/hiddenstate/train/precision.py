"""Mixed precision on the GPU.

:func:`autocast` runs the forward pass in bfloat16 or float16
under ``torch.autocast`` (cuDNN's RNN kernels take both); :func:`grad_scaler` gives the
``GradScaler`` float16 needs. Weights and the optimizer stay in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from hiddenstate.errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "grad_scaler"]

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Run the enclosed forward pass (and loss) in ``precision`` on ``device``.

    ``"fp32"`` changes nothing; ``"bf16"`` and ``"fp16"`` use ``torch.autocast``, under which
    cuDNN's LSTM runs in half precision while the weights stay float32. Leave ``backward()`` and
    the optimizer step outside the block.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    device_type = torch.device(device).type
    if device_type != "cuda":
        raise ConfigError(f"precision {precision!r} is for CUDA devices; on {device_type} use 'fp32'")
    with torch.autocast(device_type="cuda", dtype=_AUTOCAST_DTYPES[precision]):
        yield


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """The loss scaler for ``precision``: active for ``"fp16"`` (whose gradients underflow),
    a pass-through otherwise. Use ``scaler.scale(loss).backward()``, ``scaler.step(opt)``,
    ``scaler.update()``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")

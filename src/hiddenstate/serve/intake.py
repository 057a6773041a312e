"""What an observe request may carry, checked and normalised before anything is queued.

:func:`validate` turns ``(stream_id, seq, values, horizon)`` items into :class:`Observation`
tuples: every row of every stream converted at once, each refusal one line naming the stream,
the row and what is wrong (a ShapeError or ConfigError, a 422), within the :class:`Limits`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hiddenstate.errors import ConfigError, ShapeError
from hiddenstate.serve.served import ServedModel

__all__ = ["Limits", "Observation", "check_bulk", "validate"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these it gets a 4xx, never a 5xx."""

    max_steps: int = 4096  # rows for one stream in one request
    max_streams: int = 10_000  # streams in one bulk request
    max_total_steps: int = 200_000  # rows in one bulk request, all streams together
    max_horizon: int = 4096
    max_body_bytes: int = 16 * 1024 * 1024
    # numbers one request's forecasts hold, all streams together (horizon x targets each), and the
    # sample paths a path forecast draws (paths x horizon x targets): what one request may cost
    max_forecast_values: int = 1_000_000

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Limits.{name} must be a positive int, got {value!r}")

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class Observation(NamedTuple):
    """One stream's part of an observe request, validated and normalised."""

    stream_id: str
    seq: int
    x: np.ndarray  # (steps, n_in) float32, normalised
    horizon: int | None
    digest: bytes


def check_bulk(limits: Limits, items: int, rows: int) -> None:
    """A bulk request's size as sent, repeated streams included (they are answered one by one)."""
    if items > limits.max_streams:
        raise ShapeError(f"{items} streams in one request; at most {limits.max_streams}")
    if rows > limits.max_total_steps:
        raise ShapeError(f"{rows} rows in one request; at most {limits.max_total_steps}")


def validate(
    served: ServedModel, limits: Limits, items: Sequence[tuple[str, int, Sequence[Sequence[float]], int | None]]
) -> list[Observation]:
    """Check and normalise ``(stream_id, seq, values, horizon)`` items, all rows at once.

    Raises ShapeError or ConfigError naming the stream, the row and what is wrong; nothing
    is queued unless every item is acceptable.
    """
    lim = limits
    if len(items) > lim.max_streams:
        raise ShapeError(f"{len(items)} streams in one request; at most {lim.max_streams}")
    lengths = [len(values) for _, _, values, _ in items]
    for (sid, _, _, _), steps in zip(items, lengths, strict=True):
        if steps > lim.max_steps:
            raise ShapeError(f"stream {sid!r}: {steps} rows in one request; at most {lim.max_steps}")
    if sum(lengths) > lim.max_total_steps:
        raise ShapeError(f"{sum(lengths)} rows in one request; at most {lim.max_total_steps}")
    if len(items) > 1 and len({item[0] for item in items}) < len(items):
        seen: set[str] = set()
        for sid, _, _, _ in items:
            if sid in seen:
                raise ShapeError(f"stream {sid!r} appears twice in one request; send its rows in one item")
            seen.add(sid)
    rows = items[0][2] if len(items) == 1 else [row for _, _, values, _ in items for row in values]
    try:
        raw = np.array(rows, dtype=np.float64)  # (all rows, n_in)
        ok = raw.ndim == 2 and raw.shape[1] == served.n_inputs
    except ValueError:  # ragged rows
        ok = False
    if not ok:
        for sid, _, values, _ in items:
            for r, row in enumerate(values):
                if len(row) != served.n_inputs:
                    raise ShapeError(
                        f"stream {sid!r}: values row {r} has {len(row)} numbers; the model takes "
                        f"{served.n_inputs} ({', '.join(served.inputs)})"
                    )
    x = served.normalise(raw)  # (all rows, n_in) float32
    offsets = [0]
    for steps in lengths:
        offsets.append(offsets[-1] + steps)
    bound = served.input_bound  # checked on the float64 values, so that it is exactly what /openapi.json states
    if not np.isfinite(x).all() or np.abs(raw).max(initial=0.0) > bound:
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x) | (np.abs(raw) > bound))[0])
        k = int(np.searchsorted(offsets, r, side="right")) - 1
        raise ShapeError(
            f"stream {items[k][0]!r}: values row {r - offsets[k]} column {served.inputs[c]!r} "
            f"({float(raw[r, c])!r}) is out of float32 range once normalised"
        )
    for horizon in {h for _, _, _, h in items} - {None}:
        if horizon > lim.max_horizon:  # type: ignore[operator]
            raise ConfigError(f"horizon {horizon} is above the limit of {lim.max_horizon}")
        served.forecast_method(horizon)  # type: ignore[arg-type]  # ConfigError when it cannot be done
    values = sum(h for _, _, _, h in items if h is not None) * served.n_targets
    if values > lim.max_forecast_values:
        raise ConfigError(
            f"the horizons of one request ask for {values} forecast values ({served.n_targets} targets per step); "
            f"at most {lim.max_forecast_values}"
        )
    # Each stream's digest hashes its rows (float64, as sent) and its horizon: a repeated seq
    # replays only for the same body. One bytes object for all rows, sliced per stream.
    # (tuple.__new__ builds each NamedTuple at a third of the cost of calling the class.)
    blob, width, blake2b, make = raw.tobytes(), raw.shape[1] * 8, hashlib.blake2b, tuple.__new__
    return [
        make(
            Observation,
            (
                sid,
                seq,
                x[a:b],
                horizon,
                blake2b(blob[a * width : b * width] + b"%r" % horizon, digest_size=16).digest(),
            ),
        )
        for (sid, seq, _, horizon), a, b in zip(items, offsets, offsets[1:], strict=False)
    ]

"""The stages of one micro-batch, in the order :meth:`Service._process` runs them::

    judge      each observation against its stored record: advance, replay, gap or refuse
    decode     the stored float32 states of the advancing streams into one tensor
    advance    one model call per step count (ServedModel.advance), then the finite check
    forecast   the horizons asked for, one call per horizon
    encode     the new records and their compare-and-set writes, and each stream's answer
    (commit)   the store's write, then the cache: done by the Service, which owns both

Every stage works on the whole batch at once; the per-stream loops build tuples only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from hiddenstate.errors import HiddenStateError, NonFiniteError, ReplayConflictError, SequenceGapError, ShapeError
from hiddenstate.serve.intake import Observation
from hiddenstate.serve.served import ServedModel
from hiddenstate.serve.stores import Record, Write, new_version

__all__ = ["Advance", "Advancing", "Outcome", "advance", "decode", "encode", "forecast", "judge"]


class Outcome(NamedTuple):
    """The result of one observation: ``status`` 200 with the ``answer`` (JSON-ready), or an error."""

    status: int
    answer: dict[str, Any] | None = None
    detail: str = ""
    expected_seq: int | None = None
    replayed: bool = False
    error: str = ""  # the error's code (hiddenstate.errors): sequence_gap, replay_conflict, invalid, ...

    @classmethod
    def refusal(cls, error: HiddenStateError, expected_seq: int | None = None) -> Outcome:
        """The outcome of ``error``, with the status and code of its class."""
        return cls(error.http_status, detail=str(error), expected_seq=expected_seq, error=error.code)


@dataclass
class Advancing:
    """The observations of a batch that advance: ``have`` their records (None: a new stream),
    ``slots`` their places in the batch."""

    go: list[Observation]
    have: list[Record | None]
    slots: list[int]


class Advance(NamedTuple):
    """What the model made of the advancing streams (n of them)."""

    new: torch.Tensor  # (n, state_width) float32 normalised
    tails: torch.Tensor  # (n, n_in + n_out): the last row and the prediction, normalised
    predictions: np.ndarray  # (n, n_out) float64, original units
    ok: np.ndarray  # (n,) bool: every number finite


def judge(
    batch: Sequence[Observation], records: dict[str, Record], served: ServedModel, counts: Counter[str]
) -> tuple[list[Any], Advancing]:
    """The verdict of the sequence contract for each observation: the results of those that do
    not advance (replays, gaps, refusals) in their slots, and the ones that advance."""
    results: list[Any] = [None] * len(batch)
    moving = Advancing([], [], [])
    for k, o in enumerate(batch):
        r = records.get(o.stream_id)
        last = r.seq if r is not None else 0
        if o.seq == last + 1 and (r is not None or not served.cond_size or o.x.shape[0] >= 2):
            moving.go.append(o)
            moving.have.append(r)
            moving.slots.append(k)
        elif r is not None and o.seq == last:
            results[k] = replay(o, r, served, counts)
        elif o.seq != last + 1:
            results[k] = Outcome.refusal(SequenceGapError(o.stream_id, last + 1, o.seq), expected_seq=last + 1)
            counts["gap"] += 1
        else:
            refused = ShapeError(
                f"stream {o.stream_id!r}: this model starts a stream from its first row "
                "(state_encoder 'cond'), so the first observe needs at least 2 rows"
            )
            results[k] = Outcome.refusal(refused)
            counts["rejected"] += 1
    return results, moving


def decode(served: ServedModel, have: Sequence[Record | None]) -> torch.Tensor:
    """``(n, state_width)``: the stored states, zeros for new streams (the model starts those)."""
    n = len(have)
    stored = [i for i, r in enumerate(have) if r is not None]
    if len(stored) == n:
        return served.from_bytes([r.state for r in have])  # type: ignore[union-attr]
    starts = torch.zeros(n, served.state_width)
    if stored:
        starts[torch.tensor(stored)] = served.from_bytes([have[i].state for i in stored])  # type: ignore[union-attr]
    return starts


def advance(served: ServedModel, starts: torch.Tensor, moving: Advancing) -> Advance:
    """Run every advancing stream through its rows; flag the ones the model made non-finite."""
    fresh = np.fromiter((r is None for r in moving.have), dtype=bool, count=len(moving.have))
    new, preds = served.advance(starts, fresh, [o.x for o in moving.go])  # (n, state_width), (n, n_out)
    tails = torch.cat([torch.from_numpy(np.stack([o.x[-1] for o in moving.go])), preds], dim=1)  # (n, n_in + n_out)
    predictions = served.targets_original(preds.numpy())  # (n, n_out) float64, original units
    ok = torch.isfinite(new).all(1).numpy() & np.isfinite(predictions).all(1)
    return Advance(new, tails, predictions, ok)


def forecast(served: ServedModel, moving: Advancing, done: Advance) -> dict[int, tuple[np.ndarray, list[list[float]]]]:
    """Each asked-for forecast by stream index: (normalised float32, original units); a stream whose
    forecast is not finite is flagged in ``done.ok`` instead."""
    forecasts: dict[int, tuple[np.ndarray, list[list[float]]]] = {}
    for horizon in {o.horizon for o in moving.go} - {None}:
        rows = [i for i, o in enumerate(moving.go) if o.horizon == horizon]
        picked = torch.tensor(rows)
        f = served.forecast(done.new[picked], done.tails[picked], horizon).numpy()  # type: ignore[arg-type]
        original = served.targets_original(f)  # (len(rows), horizon, n_out)
        good = np.isfinite(f).all((1, 2)) & np.isfinite(original).all((1, 2))
        for i, fi, oi, g in zip(rows, f, original, good.tolist(), strict=True):
            if g:
                forecasts[i] = (fi, oi.tolist())
            else:
                done.ok[i] = False
    return forecasts


def encode(
    served: ServedModel,
    moving: Advancing,
    done: Advance,
    forecasts: dict[int, tuple[np.ndarray, list[list[float]]]],
    results: list[Any],
    counts: Counter[str],
) -> tuple[list[Write], list[tuple[int, int, dict[str, Any]]]]:
    """The compare-and-set writes of the finite streams and their answers ``(slot, steps, answer)``;
    a non-finite stream gets its refusal in ``results`` and is never written."""
    state_bytes = done.new.numpy().astype("<f4", copy=False).tobytes()
    tail_bytes = done.tails.numpy().astype("<f4", copy=False).tobytes()
    sw, tw = served.state_width * 4, done.tails.shape[1] * 4
    now = time.time()
    writes: list[Write] = []
    answers: list[tuple[int, int, dict[str, Any]]] = []
    make, version = tuple.__new__, new_version  # locals, and NamedTuples built without their __new__: per stream
    rows = zip(moving.go, moving.have, moving.slots, done.ok.tolist(), done.predictions.tolist(), strict=True)
    for i, (o, r, slot, good, prediction) in enumerate(rows):
        if not good:
            results[slot] = Outcome.refusal(
                NonFiniteError(
                    f"stream {o.stream_id!r}: the model produced NaN or inf at seq {o.seq}; "
                    "the state was not advanced (check the values for outliers)"
                )
            )
            counts["nonfinite"] += 1
            continue
        answer: dict[str, Any] = {"id": o.stream_id, "seq": o.seq, "prediction": prediction}
        fbytes = None
        if o.horizon is not None:
            fc, answer["forecast"] = forecasts[i]
            fbytes = fc.astype("<f4").tobytes()
        state, tail = state_bytes[i * sw : (i + 1) * sw], tail_bytes[i * tw : (i + 1) * tw]
        record = make(Record, (o.seq, version(), state, tail, fbytes, o.digest, now))
        writes.append(make(Write, (o.stream_id, 0 if r is None else r.version, record)))
        answers.append((slot, len(o.x), answer))
    return writes, answers


def replay(o: Observation, r: Record, served: ServedModel, counts: Counter[str]) -> Outcome:
    """A repeated seq: the stored answer again when the body is the same, else a conflict."""
    if r.digest is None or r.tail is None:
        counts["conflict"] += 1
        return Outcome.refusal(
            ReplayConflictError(
                f"stream {o.stream_id!r}: seq {o.seq} was set by a PUT of the state, not by an observe; "
                f"there is no answer to repeat; the next seq is {o.seq + 1}"
            ),
            expected_seq=o.seq + 1,
        )
    if r.digest != o.digest:
        counts["conflict"] += 1
        return Outcome.refusal(
            ReplayConflictError(
                f"stream {o.stream_id!r}: seq {o.seq} was already applied with other values or horizon; "
                f"the next seq is {o.seq + 1}"
            ),
            expected_seq=o.seq + 1,
        )
    counts["replayed"] += 1
    return Outcome(200, stored_answer(served, o.stream_id, r), replayed=True)


def stored_answer(served: ServedModel, stream_id: str, r: Record) -> dict[str, Any]:
    """The answer of the observe that wrote ``r``, rebuilt from the stored float32 prediction and
    forecast by the same arithmetic as then, so it is the same, bit for bit."""
    prediction = np.frombuffer(r.tail, dtype="<f4")[served.n_inputs :]  # type: ignore[arg-type]
    answer: dict[str, Any] = {
        "id": stream_id,
        "seq": r.seq,
        "prediction": served.targets_original(prediction).tolist(),
    }
    if r.forecast is not None:
        f = np.frombuffer(r.forecast, dtype="<f4").reshape(-1, served.n_targets)  # (horizon, n_out)
        answer["forecast"] = served.targets_original(f).tolist()
    return answer

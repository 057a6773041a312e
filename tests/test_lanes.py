"""The lane layout: continuity with many unequal series, check_continuity, the window sampler."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hiddenstate as hs


def make_series(lengths, n_in=2):
    """Inputs whose every value says where it came from: x[j][t] = (1000 j + t, -(1000 j + t))."""
    xs = [
        np.stack([1000.0 * j + np.arange(n), -(1000.0 * j + np.arange(n))], axis=1)[:, :n_in]
        for j, n in enumerate(lengths)
    ]
    ys = [x[:, :1] + 0.5 for x in xs]
    return xs, ys


def reconstruct(batches, num_series):
    """Follow each lane through the batches; gather every series' x, y rows and chunk starts."""
    xs, ys, starts = [[] for _ in range(num_series)], [[] for _ in range(num_series)], [[] for _ in range(num_series)]
    for b in batches:
        for i, lane in enumerate(b.lanes):
            if lane is None:
                continue
            j, t0 = lane
            n = int(b.mask[i].sum())
            xs[j].append((t0, b.x[i, :n].numpy()))
            ys[j].append((t0, b.y[i, :n].numpy()))
            starts[j].append(t0)
    join = [np.concatenate([a for _, a in sorted(parts, key=lambda p: p[0])]) for parts in xs]
    join_y = [np.concatenate([a for _, a in sorted(parts, key=lambda p: p[0])]) for parts in ys]
    return join, join_y, starts


def check_layout(sb, xs, ys):
    """Every value claim of the contract, batch by batch and row by row."""
    batches = list(sb)
    piece_starts = {(j, row) for lane in sb.assignment for j, row, _ in lane}
    for k, b in enumerate(batches):
        for i, lane in enumerate(b.lanes):
            if lane is None:  # idle: nothing valid, zeros
                assert not b.mask[i].any() and not b.x[i].any() and not b.reset[i]
                continue
            j, t0 = lane
            valid = min(sb.steps, len(xs[j]) - 1 - t0)
            assert b.mask[i].tolist() == [True] * valid + [False] * (sb.steps - valid)
            assert bool(b.reset[i]) == ((j, t0) in piece_starts)
            np.testing.assert_array_equal(b.cond[i].numpy(), xs[j][t0 - 1])  # the row before the chunk
            assert not b.x[i, valid:].any() and not b.y[i, valid:].any()  # padding is zeros
            if k and not b.reset[i]:
                assert batches[k - 1].lanes[i] == (j, t0 - sb.steps)  # row i continues row i
    got_x, got_y, _ = reconstruct(batches, len(xs))
    for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
        np.testing.assert_array_equal(got_x[j], x[1:-1])  # x: rows 1 .. n-2
        np.testing.assert_array_equal(got_y[j], y[2:])  # y: the next rows 2 .. n-1
    assert sb.valid_steps == sum(len(x) - 2 for x in xs)
    assert hs.check_continuity(batches, xs, ys) == len(sb)


LENGTHS = [50, 3, 17, 33, 8, 100, 26, 4, 61]


def test_many_unequal_series_whole_in_lanes():
    xs, ys = make_series(LENGTHS)
    sb = hs.StatefulBatches(xs, ys, batch_size=4, steps=7, split=False)
    check_layout(sb, xs, ys)
    # every series starts at row 1 on a chunk boundary and resets exactly there
    assert sorted(row for lane in sb.assignment for _, row, _ in lane) == [1] * len(LENGTHS)
    assert sum(int(b.reset.sum()) for b in sb) == len(LENGTHS)
    # longest first to the shortest lane: lane lengths end within one piece of each other
    chunks = [sum(c for *_, c in lane) for lane in sb.assignment]
    assert max(chunks) - min(chunks) <= max(c for lane in sb.assignment for *_, c in lane)
    assert len(sb) == max(chunks) == 14  # the 100-row series alone needs ceil(98 / 7) = 14 chunks


def test_many_unequal_series_split_into_pieces():
    xs, ys = make_series(LENGTHS)
    sb = hs.StatefulBatches(xs, ys, batch_size=4, steps=7)
    check_layout(sb, xs, ys)
    chunks = [sum(c for *_, c in lane) for lane in sb.assignment]
    # 45 chunks in 4 lanes: the 14-chunk series is cut in two, and no lane ends more than a chunk early
    assert sb.num_lanes == 4 and chunks == [11, 12, 11, 11] and len(sb) == 12


def test_single_series_fills_every_lane_in_order():
    xs, ys = make_series([1 + 10 * 8 + 1])  # 80 input rows: 10 chunks of 8
    sb = hs.StatefulBatches(xs, ys, batch_size=5, steps=8)
    check_layout(sb, xs, ys)
    assert sb.assignment == (((0, 1, 2),), ((0, 17, 2),), ((0, 33, 2),), ((0, 49, 2),), ((0, 65, 2),))
    assert sb[0].lanes == ((0, 1), (0, 17), (0, 33), (0, 49), (0, 65))
    assert sb[0].reset.all() and not sb[1].reset.any() and sb[1].mask.all()


def diagram_batches():
    """The docstring's picture: a (5 chunks), b (3) and c (2) in two lanes, 4 steps per chunk."""
    xs, ys = make_series([19, 12, 8])
    return hs.StatefulBatches(xs, ys, batch_size=2, steps=4, split=False), xs, ys


def test_docstring_diagram_exactly():
    sb, xs, ys = diagram_batches()
    assert [b.lanes for b in sb] == [
        ((0, 1), (1, 1)),
        ((0, 5), (1, 5)),
        ((0, 9), (1, 9)),
        ((0, 13), (2, 1)),
        ((0, 17), (2, 5)),
    ]
    assert [b.reset.tolist() for b in sb] == [
        [True, True],
        [False, False],
        [False, False],
        [False, True],
        [False, False],
    ]
    assert [b.mask.sum(1).tolist() for b in sb] == [[4, 4], [4, 4], [4, 2], [4, 4], [1, 2]]
    b3 = sb[3]
    assert b3.x[1, :, 0].tolist() == [2001.0, 2002.0, 2003.0, 2004.0] and b3.cond[1].tolist() == [2000.0, -2000.0]
    assert b3.y[1, :, 0].tolist() == [2002.5, 2003.5, 2004.5, 2005.5]
    assert sb[-1].lanes == sb[4].lanes and len(sb) == 5
    assert repr(sb) == "StatefulBatches(series=3, lanes=2, steps=4, batches=5, valid_steps=33)"
    check_layout(sb, xs, ys)


def continuity_error(message):
    return pytest.raises(hs.ContinuityError, match="^" + re.escape(message) + "$")


def test_check_continuity_names_first_broken_batch_and_row():
    sb, xs, ys = diagram_batches()
    b = list(sb)
    with continuity_error(
        "batch 1, row 0: (series 0, start_row 9) does not reset, but batch 0 row 0 holds "
        "(series 0, start_row 1), so it should continue at (series 0, start_row 5)"
    ):
        hs.check_continuity([b[0], b[2], b[1], b[3], b[4]])
    with continuity_error("batch 0, row 0: (series 0, start_row 5) does not reset, but the lane has nothing before it"):
        hs.check_continuity(b[1:])
    # continuing a row that was padded (series 1 ended in batch 2)
    fake = dataclasses.replace(b[3], lanes=((0, 13), (1, 13)), reset=torch.tensor([False, False]))
    with continuity_error("batch 3, row 1: (series 1, start_row 13) continues batch 2 row 1, which was padded"):
        hs.check_continuity([*b[:3], fake])
    gap = dataclasses.replace(b[0], mask=torch.tensor([[True, False, True, True], [True] * 4]))
    with continuity_error("batch 0, row 0: the mask has a gap; padding may only end a row"):
        hs.check_continuity([gap])
    idle = dataclasses.replace(b[0], lanes=((0, 1), None))
    with continuity_error("batch 0, row 1: an idle row (lanes None) has 4 unmasked steps"):
        hs.check_continuity([idle])
    other = hs.StatefulBatches(xs, ys, batch_size=2, steps=3, split=False)[1]
    with continuity_error(
        "batch 1: shape (batch=2, steps=3) differs from batch 0's (batch=2, steps=4); lanes cannot change"
    ):
        hs.check_continuity([b[0], other])
    with continuity_error("batch 0: expected a Batch, got dict"):
        hs.check_continuity([{}])


def test_check_continuity_against_the_data():
    sb, xs, ys = diagram_batches()
    wrong = [x.copy() for x in xs]
    wrong[1][7, 0] += 1
    with continuity_error("batch 1, row 1: x differs from inputs[1][5:9]"):
        hs.check_continuity(sb, wrong)
    wrong = [x.copy() for x in xs]
    wrong[2][0, 1] = 0.0  # row 0 is only ever a cond, never an x
    with continuity_error("batch 3, row 1: cond differs from inputs[2][0]"):
        hs.check_continuity(sb, wrong)
    wrong_y = [y.copy() for y in ys]
    wrong_y[0][18, 0] = 0.0
    with continuity_error("batch 4, row 0: y differs from targets[0][18:19]"):
        hs.check_continuity(sb, xs, wrong_y)
    longer = [np.concatenate([x, x[-1:]]) for x in xs]
    with continuity_error("batch 2, row 1: padding starts at row 11 of series 1, before its end"):
        hs.check_continuity(sb, longer)


@settings(max_examples=60, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(3, 40), min_size=1, max_size=6),
    batch_size=st.integers(1, 5),
    steps=st.integers(1, 9),
    split=st.booleans(),
)
def test_property_any_lengths_batch_sizes_and_chunks(lengths, batch_size, steps, split):
    xs, ys = make_series(lengths)
    sb = hs.StatefulBatches(xs, ys, batch_size=batch_size, steps=steps, split=split)
    assert sb.num_lanes <= batch_size
    check_layout(sb, xs, ys)
    pieces = sum(len(lane) for lane in sb.assignment)
    assert sum(int(b.reset.sum()) for b in sb) == pieces
    if not split:
        assert pieces == len(lengths)


def test_batches_are_views_of_one_precomputed_tensor():
    xs, ys = make_series([200])
    sb = hs.StatefulBatches(xs, ys, batch_size=3, steps=10)
    b0, b1 = sb[0], sb[1]
    assert b0.x.is_contiguous() and b0.x.dtype == torch.float32
    assert b1.x.data_ptr() - b0.x.data_ptr() == 3 * 10 * 2 * 4  # the next (lanes, steps, n_in) block
    assert sb[0].x.data_ptr() == b0.x.data_ptr()  # nothing is copied per batch


def test_dtypes_device_and_batch_checks():
    xs, ys = make_series([30, 20])
    b = hs.StatefulBatches(xs, ys, batch_size=2, steps=5, dtype=torch.float64)[0]
    assert b.x.dtype == b.y.dtype == b.cond.dtype == torch.float64 and b.mask.dtype == b.reset.dtype == torch.bool
    assert hs.StatefulBatches(xs, ys, 2, 5, dtype=torch.bfloat16)[0].x.dtype == torch.bfloat16
    moved = b.to("cpu")
    assert torch.equal(moved.x, b.x) and moved.lanes == b.lanes
    assert repr(b) == "Batch(batch=2, steps=5, n_in=2, n_out=1, resets=2, valid=10)"
    with pytest.raises(hs.ShapeError, match=re.escape("Batch mask: expected (batch, steps) = (2, 5), got (2, 4)")):
        dataclasses.replace(b, mask=b.mask[:, :4])
    with pytest.raises(hs.ShapeError, match=re.escape("Batch lanes: expected one entry per row (2), got 1")):
        dataclasses.replace(b, lanes=b.lanes[:1])


def test_a_batch_drives_a_model_with_reset_and_cond():
    xs, ys = make_series([40, 25, 31])
    sb = hs.StatefulBatches([x / 1000 for x in xs], [y / 1000 for y in ys], batch_size=2, steps=6)
    model = hs.SequenceModel(2, 1, [hs.LSTM(4)], state_encoder="cond:2")
    state = None
    for b in sb:
        y, state = model(b.x, state, cond=b.cond, reset=b.reset)
        loss = ((y - b.y) ** 2)[b.mask].mean()
        assert torch.isfinite(loss)
        state = state.detach()
    assert state.batch_size == sb.num_lanes


def test_lane_errors():
    xs, ys = make_series([10, 2])
    with pytest.raises(hs.DataError, match=re.escape("series 1 has 2 rows; it needs at least 3")):
        hs.StatefulBatches(xs, ys, 2, 4)
    xs, ys = make_series([10, 6])
    with pytest.raises(hs.ShapeError, match=re.escape("series 1: inputs have 6 rows, targets 5")):
        hs.StatefulBatches(xs, [ys[0], ys[1][:5]], 2, 4)
    with pytest.raises(hs.ShapeError, match=re.escape("2 input series but 1 target series")):
        hs.StatefulBatches(xs, ys[:1], 2, 4)
    with pytest.raises(hs.ShapeError, match=re.escape("inputs[1]: expected (steps, 2), got (6, 1)")):
        hs.StatefulBatches([xs[0], xs[1][:, :1]], ys, 2, 4)
    bad = xs[1].copy()
    bad[2, 1] = np.nan
    with pytest.raises(hs.DataError, match=re.escape("inputs[1]: non-finite value nan at row 2, column 1")):
        hs.StatefulBatches([xs[0], bad], ys, 2, 4)
    with pytest.raises(hs.ConfigError, match=re.escape("batch_size must be a positive int, got 0")):
        hs.StatefulBatches(xs, ys, 0, 4)
    with pytest.raises(hs.ConfigError, match=re.escape("steps must be a positive int, got 2.5")):
        hs.StatefulBatches(xs, ys, 2, 2.5)
    with pytest.raises(IndexError, match=re.escape("batch 9 out of range; there are 2 batches")):
        hs.StatefulBatches(xs, ys, 2, 4, split=False)[9]


# ---------------------------------------------------------------- the stateless window sampler


def test_window_sampler_values_and_counts():
    xs, ys = make_series([10, 4, 7])
    ws = hs.WindowSampler(xs, ys, window=3, batch_size=4, shuffle=False)
    assert ws.num_windows == (10 - 3 - 1) + 0 + (7 - 3 - 1) and len(ws) == 3
    batches = list(ws)
    b = batches[0]
    assert b.lanes == ((0, 1), (0, 2), (0, 3), (0, 4)) and b.reset.all()
    assert b.x[1, :, 0].tolist() == [2.0, 3.0, 4.0] and b.y[1, :, 0].tolist() == [3.5, 4.5, 5.5]
    assert b.cond[1].tolist() == [1.0, -1.0]
    last = batches[-1]  # 9 windows: the last batch has one window and three idle rows
    assert last.lanes == ((2, 3), None, None, None) and last.mask.sum(1).tolist() == [3, 0, 0, 0]
    assert hs.check_continuity(batches, xs, ys) == 3
    assert hs.WindowSampler(xs, ys, window=3, batch_size=4, stride=2).num_windows == 3 + 0 + 2


def test_window_sampler_shuffles_by_seed_and_epoch():
    xs, ys = make_series([30, 20])
    ws = hs.WindowSampler(xs, ys, window=5, batch_size=4, seed=3)
    first = [lane for b in ws for lane in b.lanes if lane is not None]
    second = [lane for b in ws for lane in b.lanes if lane is not None]
    assert sorted(first) == sorted(second) == [(0, s) for s in range(1, 25)] + [(1, s) for s in range(1, 15)]
    assert first != second and first != sorted(first)  # each epoch its own order
    ws.set_epoch(0)
    assert [lane for b in ws for lane in b.lanes if lane is not None] == first  # resumable
    again = hs.WindowSampler(xs, ys, window=5, batch_size=4, seed=3)
    assert [lane for b in again for lane in b.lanes if lane is not None] == first
    with pytest.raises(
        hs.DataError, match=re.escape("no series is long enough for a window of 40 steps (it needs 42 rows)")
    ):
        hs.WindowSampler(xs, ys, window=40, batch_size=4)

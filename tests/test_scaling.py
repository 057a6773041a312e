"""StandardScaler: values by hand, population std, train-only fitting, JSON round trip, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import hiddenstate as hs


def test_fit_by_hand_population_std_and_constant_column():
    sc = hs.StandardScaler.fit(np.array([[1.0, 7.0, 0.0], [3.0, 7.0, 4.0], [5.0, 7.0, 8.0]]))
    assert sc.mean.tolist() == [3.0, 7.0, 4.0]
    # population std (ddof=0): sqrt(8/3); a constant column gets std 1 and is only centred
    np.testing.assert_allclose(sc.std, [np.sqrt(8 / 3), 1.0, np.sqrt(32 / 3)], rtol=1e-15)
    np.testing.assert_allclose(sc.transform(np.array([[3.0 + np.sqrt(8 / 3), 9.0, 4.0]])), [[1.0, 2.0, 0.0]])


def test_a_constant_float_column_is_only_centred_although_its_std_is_not_zero():
    rows = np.full((70, 1), 7.7)
    assert rows.std() > 0  # float64 noise: 2.7e-15
    sc = hs.StandardScaler.fit(rows)
    assert sc.std.tolist() == [1.0]
    np.testing.assert_allclose(sc.transform(np.array([[7.8]])), [[0.1]], rtol=1e-9)
    tiny = hs.StandardScaler.fit(np.array([[1e-3], [2e-3], [3e-3]]))  # small but varying: scaled
    np.testing.assert_allclose(tiny.std, [np.sqrt(2 / 3) * 1e-3], rtol=1e-12)


def test_transform_inverse_numpy_and_torch():
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, size=(200, 4))
    sc = hs.StandardScaler.fit(data)
    z = sc.transform(data)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(sc.inverse_transform(z), data, rtol=1e-12)
    batch = torch.tensor(data[:30].reshape(3, 10, 4), dtype=torch.float32)  # (batch, steps, n)
    zt = sc.transform(batch)
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z[:30].reshape(3, 10, 4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sc.inverse_transform(zt).numpy(), batch.numpy(), rtol=1e-6)


def test_fit_on_train_split_only():
    ds = hs.synthetic_dataset(n_steps=1000)
    train, _, _ = ds.split(hs.Split())
    sc = hs.StandardScaler.fit(train)
    assert sc.columns == ("load", "temperature")
    np.testing.assert_array_equal(sc.mean, ds.array()[:700].mean(0))
    np.testing.assert_array_equal(sc.std, ds.array()[:700].std(0))
    assert not np.allclose(sc.mean, ds.array().mean(0))
    # several series: their rows are stacked
    two = hs.StandardScaler.fit([np.array([[0.0], [2.0]]), np.array([[4.0]])])
    assert two.mean.tolist() == [2.0] and two.std.tolist() == [np.sqrt(8 / 3)]


def test_json_round_trip_is_exact():
    rng = np.random.default_rng(1)
    sc = hs.StandardScaler.fit(rng.normal(size=(50, 3)) * [1e-3, 1.0, 1e6], columns=["a", "b", "c"])
    back = hs.StandardScaler.from_json(json.loads(json.dumps(sc.to_json())))
    assert back == sc and back.columns == ("a", "b", "c")
    np.testing.assert_array_equal(back.mean, sc.mean)  # bit for bit
    np.testing.assert_array_equal(back.std, sc.std)
    no_names = hs.StandardScaler.fit(np.ones((3, 2)))
    assert hs.StandardScaler.from_json(json.loads(json.dumps(no_names.to_json()))) == no_names


def test_select_for_target_only_inverse():
    sc = hs.StandardScaler(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]), ("a", "b", "ot"))
    ot = sc.select([2])
    assert ot.columns == ("ot",) and ot.inverse_transform(np.array([[1.0]])).tolist() == [[33.0]]
    assert sc.select(["ot", "a"]).mean.tolist() == [3.0, 1.0]
    with pytest.raises(hs.DataError, match=re.escape("StandardScaler.select: column 'x' not among ('a', 'b', 'ot')")):
        sc.select(["x"])
    with pytest.raises(hs.ShapeError, match=re.escape("StandardScaler.select: index 3 out of range for 3 columns")):
        sc.select([3])


def test_errors():
    sc = hs.StandardScaler.fit(np.zeros((4, 2)))
    with pytest.raises(
        hs.ShapeError, match=re.escape("StandardScaler.transform: expected (..., n_columns=2), got (4, 3)")
    ):
        sc.transform(np.zeros((4, 3)))
    with pytest.raises(
        hs.ShapeError, match=re.escape("StandardScaler.inverse_transform: expected (..., n_columns=2), got (5,)")
    ):
        sc.inverse_transform(torch.zeros(5))
    with pytest.raises(hs.DataError, match=re.escape("StandardScaler.fit: non-finite value nan at row 1, column 0")):
        hs.StandardScaler.fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(
        hs.ShapeError,
        match=re.escape("StandardScaler.fit: expected (rows, n_columns) arrays of one width, got (2, 1), (2, 2)"),
    ):
        hs.StandardScaler.fit([np.zeros((2, 1)), np.zeros((2, 2))])
    with pytest.raises(hs.DataError, match=re.escape("StandardScaler.fit: no rows to fit on")):
        hs.StandardScaler.fit(np.zeros((0, 2)))
    with pytest.raises(hs.ConfigError, match=re.escape("StandardScaler in JSON needs numeric lists 'mean' and 'std'")):
        hs.StandardScaler.from_json({"mean": [0.0]})
    with pytest.raises(hs.ConfigError, match=re.escape("StandardScaler: mean and std must be finite and std > 0")):
        hs.StandardScaler(np.zeros(2), np.array([1.0, 0.0]))

"""Reading CSV/Parquet (wide and long), every DataError message, splits, ETT borders, synthetic data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiddenstate as hs
from hiddenstate.data.synthetic import STEPS_PER_DAY

ETT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ett"
needs_ett = pytest.mark.skipif(
    not (ETT / "ETTm1.csv").is_file(), reason="ETT data not found in the ../shared/data/ett folder beside the repo"
)

WIDE = """\
date,a,b
2024-01-01 00:00:00,1.0,10
2024-01-01 00:15:00,2.0,20
2024-01-01 00:30:00,3.5,30
2024-01-01 00:45:00,4.0,40
"""

LONG = """\
unique_id,ds,y,z
s1,2024-01-01 00:00,1.0,5
s2,2024-01-01 00:00,100.0,6
s1,2024-01-01 00:15,2.0,7
s2,2024-01-01 00:15,200.0,8
s2,2024-01-01 00:30,300.0,9
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def to_parquet(tmp_path: Path, name: str, text: str) -> Path:
    """The same table as a Parquet file (timestamps parsed, numbers typed)."""
    csv = write(tmp_path, name + ".csv", text)
    frame = pd.read_csv(csv)
    for col in ("date", "ds"):
        if col in frame:
            frame[col] = pd.to_datetime(frame[col])
    path = tmp_path / (name + ".parquet")
    frame.to_parquet(path)
    return path


def raises(message: str):
    return pytest.raises(hs.DataError, match="^" + re.escape(message) + "$")


# ---------------------------------------------------------------- reading, wide and long


def test_wide_csv_values_time_and_id(tmp_path):
    path = write(tmp_path, "meters.csv", WIDE)
    ds = hs.read_dataset(path, time_col="date")
    assert ds.columns == ("a", "b") and ds.source == str(path) and ds.ids == ("meters",)
    np.testing.assert_array_equal(ds.array(), [[1, 10], [2, 20], [3.5, 30], [4, 40]])
    assert ds.array().dtype == np.float64
    assert [str(t) for t in ds.series[0].time[:2]] == ["2024-01-01T00:00:00.000000000", "2024-01-01T00:15:00.000000000"]


def test_wide_parquet_equals_csv(tmp_path):
    from_csv = hs.read_dataset(write(tmp_path, "m.csv", WIDE), time_col="date")
    from_parquet = hs.read_dataset(to_parquet(tmp_path, "m", WIDE), time_col="date")
    np.testing.assert_array_equal(from_csv.array(), from_parquet.array())
    np.testing.assert_array_equal(from_csv.series[0].time, from_parquet.series[0].time)
    assert from_parquet.columns == ("a", "b")


def test_parquet_with_a_time_index(tmp_path):
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=3, freq="h"), "v": [1.0, 2.0, 3.0]})
    path = tmp_path / "indexed.parquet"
    frame.set_index("date").to_parquet(path)
    ds = hs.read_dataset(path, time_col="date")
    assert ds.array()[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_choose_columns_in_order_and_no_time_column(tmp_path):
    path = write(tmp_path, "m.csv", "a,b,c\n1,2,3\n4,5,6\n")
    ds = hs.read_dataset(path, columns=["c", "a"])
    assert ds.columns == ("c", "a") and ds.array().tolist() == [[3, 1], [6, 4]]
    assert ds.series[0].time is None
    assert hs.read_dataset(path).columns == ("a", "b", "c")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_long_format_several_ids(tmp_path, fmt):
    path = write(tmp_path, "long.csv", LONG) if fmt == "csv" else to_parquet(tmp_path, "long", LONG)
    ds = hs.read_dataset(path)  # auto: unique_id and ds are present
    assert ds.ids == ("s1", "s2") and ds.columns == ("y", "z") and ds.lengths == (2, 3)
    assert ds.series[0].values.tolist() == [[1, 5], [2, 7]]
    assert ds.series[1].values.tolist() == [[100, 6], [200, 8], [300, 9]]
    assert [str(t)[:16] for t in ds.series[1].time] == ["2024-01-01T00:00", "2024-01-01T00:15", "2024-01-01T00:30"]
    assert hs.read_dataset(path, columns=["z"]).series[1].values[:, 0].tolist() == [6, 8, 9]


def test_long_format_renamed_columns(tmp_path):
    text = LONG.replace("unique_id,ds", "meter,when")
    path = write(tmp_path, "long.csv", text)
    ds = hs.read_dataset(path, id_col="meter", ds_col="when")
    assert ds.ids == ("s1", "s2") and ds.columns == ("y", "z")
    # time_col overrides ds_col in the long layout
    assert hs.read_dataset(path, id_col="meter", time_col="when", layout="long").lengths == (2, 3)
    # without the right names, auto falls back to wide, where the ids are not numbers
    with raises(f"{path}: column 'meter', data row 1: non-numeric value 's1'"):
        hs.read_dataset(path)


def test_ffill_within_each_series(tmp_path):
    path = write(tmp_path, "m.csv", "date,a,b\n2024-01-01,1,\n2024-01-02,,\n2024-01-03,3,\n")
    with raises(f"{path}: column 'b', data row 1: missing value (NaN) with no earlier value to forward-fill"):
        hs.read_dataset(path, time_col="date", fill="ffill")
    path = write(tmp_path, "m.csv", "date,a,b\n2024-01-01,1,5\n2024-01-02,,\n2024-01-03,3,NA\n")
    ds = hs.read_dataset(path, time_col="date", fill="ffill")
    assert ds.array().tolist() == [[1, 5], [1, 5], [3, 5]]
    # ffill never carries a value from one series into the next
    long = write(tmp_path, "l.csv", "unique_id,ds,y\na,1,1.0\nb,1,\na,2,\n")
    with raises(
        f"{long}: column 'y', data row 2 (series 'b'): missing value (NaN) with no earlier value to forward-fill"
    ):
        hs.read_dataset(long, fill="ffill")
    ok = write(tmp_path, "l2.csv", "unique_id,ds,y\na,1,1.0\nb,1,7\na,2,\nb,2,\n")
    assert [s.values[:, 0].tolist() for s in hs.read_dataset(ok, fill="ffill").series] == [[1, 1], [7, 7]]


def test_numeric_time_column(tmp_path):
    path = write(tmp_path, "m.csv", "step,v\n0,1\n5,2\n7,3\n")
    ds = hs.read_dataset(path, time_col="step")
    assert ds.series[0].time.tolist() == [0, 5, 7]


# ---------------------------------------------------------------- every DataError, exactly


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_columns(tmp_path, fmt):
    path = write(tmp_path, "m.csv", WIDE) if fmt == "csv" else to_parquet(tmp_path, "m", WIDE)
    with raises(f"{path}: column 'OT' not found in the header; the file has columns date, a, b"):
        hs.read_dataset(path, time_col="date", columns=["a", "OT"])
    with raises(f"{path}: column 'time' not found in the header; the file has columns date, a, b"):
        hs.read_dataset(path, time_col="time")
    with raises(f"{path}: column 'unique_id' not found in the header; the file has columns date, a, b"):
        hs.read_dataset(path, layout="long", ds_col="date")


def test_non_numeric_value_csv(tmp_path):
    path = write(tmp_path, "m.csv", WIDE.replace("3.5,30", "3.5,3O"))
    with raises(f"{path}: column 'b', data row 3: non-numeric value '3O'"):
        hs.read_dataset(path, time_col="date")
    with raises(f"{path}: column 'b', data row 3: non-numeric value '3O'"):
        hs.read_dataset(path, time_col="date", fill="ffill")
    # a forgotten time column gets a hint
    with raises(
        f"{path}: column 'date', data row 1: non-numeric value '2024-01-01 00:00:00'; "
        f"if it is the time column, pass time_col='date' (--time-col date)"
    ):
        hs.read_dataset(path)


def test_non_numeric_value_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({"a": ["1.5", "2", "n/a?", "4"], "flag": [True, False, True, True]}).to_parquet(path)
    with raises(f"{path}: column 'a', data row 3: non-numeric value 'n/a?'"):
        hs.read_dataset(path, columns=["a"])
    with raises(f"{path}: column 'flag', data row 1: non-numeric value 'True'"):
        hs.read_dataset(path, columns=["flag"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_nan_is_an_error_by_default(tmp_path, fmt):
    text = WIDE.replace("2.0,20", "2.0,")
    path = write(tmp_path, "m.csv", text) if fmt == "csv" else to_parquet(tmp_path, "m", text)
    with raises(
        f"{path}: column 'b', data row 2: missing value (NaN); "
        "pass fill='ffill' (--ffill on the command line) to forward-fill"
    ):
        hs.read_dataset(path, time_col="date")


def test_infinite_value(tmp_path):
    path = write(tmp_path, "m.csv", WIDE.replace("4.0,40", "inf,40"))
    with raises(f"{path}: column 'a', data row 4: infinite value inf"):
        hs.read_dataset(path, time_col="date", fill="ffill")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unsorted_and_duplicated_timestamps(tmp_path, fmt):
    def make(name, text):
        return write(tmp_path, name + ".csv", text) if fmt == "csv" else to_parquet(tmp_path, name, text)

    unsorted = make("u", WIDE.replace("00:30:00", "00:05:00"))
    with raises(
        f"{unsorted}: column 'date', data row 3: timestamp 2024-01-01 00:05:00 is earlier than "
        f"2024-01-01 00:15:00 at data row 2; rows must be sorted by time"
    ):
        hs.read_dataset(unsorted, time_col="date")
    duplicated = make("d", WIDE.replace("00:45:00", "00:30:00"))
    with raises(
        f"{duplicated}: column 'date', data row 4: duplicated timestamp 2024-01-01 00:30:00 (also at data row 3)"
    ):
        hs.read_dataset(duplicated, time_col="date")


def test_long_timestamps_checked_per_series(tmp_path):
    # s2's rows are 2, 4, 5; its third timestamp goes back in time; s1 is fine
    path = write(tmp_path, "long.csv", LONG.replace("s2,2024-01-01 00:30", "s2,2024-01-01 00:10"))
    with raises(
        f"{path}: column 'ds', data row 5 (series 's2'): timestamp 2024-01-01 00:10:00 is earlier than "
        f"2024-01-01 00:15:00 at data row 4; rows must be sorted by time"
    ):
        hs.read_dataset(path)
    path = write(tmp_path, "dup.csv", LONG.replace("s2,2024-01-01 00:15", "s2,2024-01-01 00:00"))
    with raises(
        f"{path}: column 'ds', data row 4 (series 's2'): duplicated timestamp 2024-01-01 00:00:00 (also at data row 2)"
    ):
        hs.read_dataset(path)
    path = write(tmp_path, "noid.csv", LONG.replace("s2,2024-01-01 00:15", ",2024-01-01 00:15"))
    with raises(f"{path}: column 'unique_id', data row 4: missing series id"):
        hs.read_dataset(path)


def test_bad_timestamps(tmp_path):
    path = write(tmp_path, "m.csv", WIDE.replace("2024-01-01 00:30:00", "yesterday"))
    with raises(f"{path}: column 'date', data row 3: cannot parse timestamp 'yesterday'"):
        hs.read_dataset(path, time_col="date")
    path = write(tmp_path, "m.csv", WIDE.replace("2024-01-01 00:30:00", ""))
    with raises(f"{path}: column 'date', data row 3: missing timestamp"):
        hs.read_dataset(path, time_col="date")


def test_file_level_errors(tmp_path):
    missing = tmp_path / "absent.csv"
    with raises(f"{missing}: no such file"):
        hs.read_dataset(missing)
    txt = write(tmp_path, "m.txt", WIDE)
    with raises(f"{txt}: unsupported file type '.txt'; expected .csv or .parquet"):
        hs.read_dataset(txt)
    empty = write(tmp_path, "empty.csv", "")
    with raises(f"{empty}: the file is empty"):
        hs.read_dataset(empty)
    header = write(tmp_path, "header.csv", "date,a\n")
    with raises(f"{header}: no data rows"):
        hs.read_dataset(header, time_col="date")
    only = write(tmp_path, "only.csv", "date\n2024-01-01\n")
    with raises(f"{only}: no value columns besides date"):
        hs.read_dataset(only, time_col="date")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(hs.DataError, match="^" + re.escape(f"{bad}: cannot read as Parquet: ")):
        hs.read_dataset(bad)
    ragged = write(tmp_path, "ragged.csv", "a,b\n1,2\n3,4,5\n")
    with raises(f"{ragged}: cannot read as CSV: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3"):
        hs.read_dataset(ragged)


def test_bad_arguments(tmp_path):
    path = write(tmp_path, "m.csv", WIDE)
    with pytest.raises(hs.ConfigError, match=re.escape("unknown layout 'tall'; expected one of auto, wide, long")):
        hs.read_dataset(path, layout="tall")
    with pytest.raises(hs.ConfigError, match=re.escape("unknown fill 'zero'; expected one of error, ffill")):
        hs.read_dataset(path, fill="zero")


# ---------------------------------------------------------------- Dataset and Split


def test_dataset_select_arrays_and_array():
    s1 = hs.Series("x", np.arange(8.0).reshape(4, 2), ("a", "b"))
    s2 = hs.Series("y", np.arange(6.0).reshape(3, 2) + 100, ("a", "b"))
    ds = hs.Dataset((s1, s2), ("a", "b"), "two")
    assert [a[:, 0].tolist() for a in ds.select(["b"]).arrays()] == [[1, 3, 5, 7], [101, 103, 105]]
    assert [a.shape for a in ds.arrays("a")] == [(4, 1), (3, 1)]
    with raises("two: column 'c' not found; the dataset has columns a, b"):
        ds.select(["c"])
    with raises("two: array() needs exactly one series, this dataset has 2; use .arrays() or .series[i].values"):
        ds.array()
    with raises("two: series 'y' has columns ('b', 'a'), the dataset has ('a', 'b')"):
        hs.Dataset((s1, s2.select([1, 0])), ("a", "b"), "two")


def test_split_fractions_borders_and_lookback():
    ds = hs.Dataset((hs.Series("s", np.arange(100.0)[:, None], ("v",)),), ("v",), "d")
    train, val, test = ds.split(hs.Split())
    assert [d.array()[[0, -1], 0].tolist() for d in (train, val, test)] == [[0, 69], [70, 79], [80, 99]]
    # TSLib rounding: train and test round down, val takes the rest
    assert hs.Split(fractions=(0.7, 0.1, 0.2)).ranges(57) == ((0, 39), (39, 46), (46, 57))
    assert hs.Split(fractions=(0.5, 0.2, 0.1)).ranges(100) == ((0, 50), (50, 70), (70, 80))
    assert hs.Split(fractions=(0.6, 0.2, 0.2), lookback=10).ranges(100) == ((0, 60), (50, 80), (70, 100))
    split = hs.Split(borders=((0, 50), (40, 70), (60, 90)))
    assert [d.lengths for d in ds.split(split)] == [(50,), (30,), (30,)]
    assert hs.Split.from_json(split.to_json()) == split
    assert hs.Split.from_json(hs.Split(lookback=3).to_json()) == hs.Split(lookback=3)
    with raises("d: series 's' has 100 rows, but the test split ends at row 120"):
        ds.split(hs.Split(borders=((0, 50), (50, 70), (70, 120))))


def test_split_time_follows_rows():
    ds = hs.synthetic_dataset(n_steps=200)
    _, val, _ = ds.split(hs.Split(borders=((0, 100), (90, 150), (140, 200))))
    np.testing.assert_array_equal(val.series[0].time, ds.series[0].time[90:150])
    np.testing.assert_array_equal(val.array(), ds.array()[90:150])


def test_split_errors():
    def config_error(message):
        return pytest.raises(hs.ConfigError, match="^" + re.escape(message) + "$")

    with config_error("a Split takes fractions or borders, not both"):
        hs.Split(fractions=(0.5, 0.5, 0.0), borders=((0, 1), (1, 2), (2, 3)))
    with config_error(
        "Split fractions must be three numbers >= 0 (train, val, test) summing to at most 1, got (0.8, 0.2, 0.2)"
    ):
        hs.Split(fractions=(0.8, 0.2, 0.2))
    with config_error("Split borders: val rows [50, 40) must have 0 <= start <= stop"):
        hs.Split(borders=((0, 50), (50, 40), (60, 90)))
    with config_error("Split borders must be three (start, stop) row pairs (train, val, test), got ((0, 5.5),)"):
        hs.Split(borders=((0, 5.5),))
    with config_error("Split.ett: unknown ETT dataset 'weather'; expected ETTh1, ETTh2, ETTm1 or ETTm2"):
        hs.Split.ett("weather", 96)


def test_ett_borders_by_hand():
    assert hs.Split.ett("ETTh2", seq_len=96).borders == ((0, 8640), (8544, 11520), (11424, 14400))
    assert hs.Split.ett("ETTm2.csv", seq_len=0).borders == ((0, 34560), (34560, 46080), (46080, 57600))
    assert hs.Split.ett("ETTm1", seq_len=96).borders == ((0, 34560), (34464, 46080), (45984, 57600))
    assert hs.Split.ett("ETTh1", seq_len=96).borders == ((0, 8640), (8544, 11520), (11424, 14400))
    assert hs.Split.ett("ETTh1", seq_len=432).borders == ((0, 8640), (8208, 11520), (11088, 14400))
    # a file shorter than the split: the one length check, in Dataset.split
    short = hs.Dataset((hs.Series("ETTh1", np.zeros((100, 7)), tuple("abcdefg")),), tuple("abcdefg"), "ETTh1.csv")
    with pytest.raises(
        hs.DataError, match=r"^ETTh1.csv: series 'ETTh1' has 100 rows, but the train split ends at row 8640$"
    ):
        short.split(hs.Split.ett("ETTh1", seq_len=96))


@needs_ett
@pytest.mark.parametrize(("name", "counts"), [("ETTm1", (34369, 11425, 11425)), ("ETTh1", (8449, 2785, 2785))])
def test_ett_standard_split_window_counts(name, counts):
    seq_len = pred_len = 96
    ds = hs.read_dataset(ETT / f"{name}.csv", time_col="date")
    assert ds.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    parts = ds.split(hs.Split.ett(name, seq_len=seq_len))
    assert tuple(n - seq_len - pred_len + 1 for (n,) in (p.lengths for p in parts)) == counts
    # the first target of val is the first val row: val starts seq_len rows before its border
    border = hs.Split.ett(name, seq_len=0).borders[1][0]
    np.testing.assert_array_equal(parts[1].array()[seq_len], ds.array()[border])
    scaler = hs.StandardScaler.fit(parts[0])  # train rows only, population std
    train_rows = ds.array()[: hs.Split.ett(name, seq_len=0).borders[0][1]]
    np.testing.assert_allclose(scaler.mean, train_rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, train_rows.std(0, ddof=0), rtol=1e-12)


# ---------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_timed():
    a, b, c = hs.synthetic_dataset(1000, seed=7), hs.synthetic_dataset(1000, seed=7), hs.synthetic_dataset(1000, seed=8)
    np.testing.assert_array_equal(a.array(), b.array())
    assert not np.allclose(a.array(), c.array())
    assert a.columns == ("load", "temperature") and a.array().shape == (1000, 2)
    steps = np.diff(a.series[0].time).astype("timedelta64[m]").astype(int)
    assert set(steps.tolist()) == {15}
    assert hs.synthetic_dataset().lengths == (8 * 7 * 96,)


def test_synthetic_beats_repeat_last_value():
    """A seasonal profile learned on train beats repeat-last on test, one step and one day ahead."""
    ds = hs.synthetic_dataset()
    values = ds.array()
    n_train = int(len(values) * 0.7)
    t = np.arange(len(values))
    slot = t % STEPS_PER_DAY + STEPS_PER_DAY * ((t // STEPS_PER_DAY) % 7)  # position in the week
    profile = np.stack([values[:n_train][slot[:n_train] == k].mean(0) for k in range(7 * STEPS_PER_DAY)])
    start = n_train + 1
    seasonal = np.mean((values[start:] - profile[slot[start:]]) ** 2)
    # repeat-last from each test origin o: predict values[o] for o+1 .. o+h
    repeat_one = np.mean((values[start:] - values[start - 1 : -1]) ** 2)
    repeat_day = np.mean([np.mean((values[start + h :] - values[start:-h]) ** 2) for h in range(1, 97)])
    assert seasonal < 0.75 * repeat_one
    assert seasonal < 0.25 * repeat_day

"""The `hiddenstate` command line, end to end: real CSV and Parquet files, in-process and as a subprocess."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import hiddenstate as hs
from hiddenstate.cli.commands import app

runner = CliRunner()
TINY = ["--epochs", "2", "--hidden", "8", "--steps", "24", "--batch-size", "4", "--horizon", "8", "--no-plots"]


def invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path) -> object:
    result = invoke(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def _wide_frame(n: int = 400) -> pd.DataFrame:
    t = np.arange(n)
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "date": pd.date_range("2024-03-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "load": 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n),
            "temp": 20 + 2 * np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n),
        }
    )


def _long_frame() -> pd.DataFrame:
    parts = []
    for k, (sid, n) in enumerate([("north", 300), ("south", 240), ("east", 270)]):
        t = np.arange(n)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": sid,
                    "ds": pd.date_range("2024-01-01", periods=n, freq="15min"),
                    "y": 5 + k + np.sin(2 * np.pi * t / 32 + k),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run trained on a wide CSV file, shared by the read-only commands' tests."""
    folder = tmp_path_factory.mktemp("csv_run")
    data = folder / "wide.csv"
    _wide_frame().to_csv(data, index=False)
    ok("train", data, "--time-col", "date", "--out", folder / "run", *TINY)
    return data, folder / "run"


# -- train, evaluate, forecast, inspect, plot on real files --------------------------------------


def test_train_on_wide_csv_writes_a_loadable_run(csv_run: tuple[Path, Path]) -> None:
    _, run_dir = csv_run
    run = hs.load_run(run_dir)
    assert run.inputs == ("load", "temp") and run.targets == ("load", "temp")
    assert run.spec == hs.StateSpec([("lstm", 8)])
    assert run.lane_state is not None and run.lane_state.batch_size == 4
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["horizon"] == 8 and evaluation["method"] == "direct"
    assert set(evaluation["model"]) == {"normalised", "original"}
    assert set(evaluation["model"]["original"]) == {"mse", "mae", "rmse"}


def test_forecast_csv_contents(csv_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run_dir = csv_run
    out = tmp_path / "fc.csv"
    result = ok("forecast", run_dir, data, "--horizon", "5", "--method", "rollout", "--out", out)
    assert f"wrote {out}: 5 steps × 1 series of load, temp" in result.stdout
    rows = _read_csv(out.read_text())
    assert list(rows[0]) == ["unique_id", "step", "ds", "load", "temp"]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert {r["unique_id"] for r in rows} == {"wide"}
    # the last timestamp of the file is 2024-03-01 00:00 + 399 h; the forecast continues hourly
    assert [r["ds"] for r in rows[:2]] == ["2024-03-17 16:00:00", "2024-03-17 17:00:00"]
    # the values are the run's own forecast from the whole file, in original units
    history = _wide_frame()[["load", "temp"]].to_numpy()
    expected = hs.load_run(run_dir).forecast(history, 5, "rollout")[0]
    got = np.array([[float(r["load"]), float(r["temp"])] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_forecast_rollout_and_direct_differ_and_direct_is_bounded_by_its_head(
    csv_run: tuple[Path, Path],
) -> None:
    data, run_dir = csv_run
    rollout = _read_csv(ok("forecast", run_dir, data, "--horizon", "8", "--method", "rollout").stdout)
    direct = _read_csv(ok("forecast", run_dir, data, "--horizon", "8", "--method", "direct").stdout)
    assert len(rollout) == len(direct) == 8
    assert [r["load"] for r in rollout] != [r["load"] for r in direct]
    result = invoke("forecast", run_dir, data, "--horizon", "20", "--method", "direct")
    assert result.exit_code == 1
    assert result.stderr == "Error: the direct head forecasts 8 steps, but horizon 20 was asked\n"


def test_evaluate_prints_model_and_baseline(csv_run: tuple[Path, Path]) -> None:
    _, run_dir = csv_run
    out = ok("evaluate", run_dir, "--horizon", "6", "--method", "rollout").stdout
    assert "Test split: 6-step forecasts from" in out
    assert "model (rollout)" in out and "repeat last value" in out
    verdicts = re.findall(
        r"(✓ The model beats|✗ The model does NOT beat) the repeat-last baseline: test MSE (\S+) vs (\S+) ", out
    )
    assert len(verdicts) == 1, out
    verdict, got, base = verdicts[0]
    # the printed MSEs are the run's own scores, and the verdict is the one they imply
    from hiddenstate.cli import pipeline

    run, settings, dataset = pipeline.load(run_dir, None, {"horizon": 6})
    scores = pipeline.evaluate(run, dataset, settings, 6, "rollout")
    model_mse, base_mse = scores.model["normalised"]["mse"], scores.baseline["normalised"]["mse"]
    assert (got, base) == (f"{model_mse:.4g}", f"{base_mse:.4g}")
    assert verdict == ("✓ The model beats" if model_mse < base_mse else "✗ The model does NOT beat")


def test_inspect_run_shows_spec_and_lane_states(csv_run: tuple[Path, Path]) -> None:
    _, run_dir = csv_run
    out = ok("inspect", run_dir, "--lanes", "2").stdout
    assert "state spec [lstm 8]" in out and "hs1-lstm8-" in out
    assert "layers.0.h, layers.0.c" in out
    assert "carried state of 4 lanes" in out
    assert "2 more lanes not shown (--lanes 4)" in out
    state = hs.load_run(run_dir).lane_state
    h0 = state.layers[0].h[0].double()
    assert f"{float(h0.mean()):+.3f} ± {float(h0.std(unbiased=False)):.3f}, {float(h0.abs().max()):.3f}" in out


def test_inspect_spec() -> None:
    out = ok("inspect", "--spec", "lstm:16,gru:4").stdout
    assert "state spec [lstm 16, gru 4]" in out
    assert hs.StateSpec([("lstm", 16), ("gru", 4)]).fingerprint() in out
    assert "h (batch, 4)" in out and "layers.1.c" not in out


def test_plot_writes_both_pngs(csv_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run_dir = csv_run
    ok("plot", run_dir, data, "--out-dir", tmp_path, "--steps", "48")
    for name in ("forecast.png", "states.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_on_long_parquet_with_series_of_unequal_length(tmp_path: Path) -> None:
    data = tmp_path / "long.parquet"
    _long_frame().to_parquet(data, index=False)
    out = ok("train", data, "--out", tmp_path / "run", *TINY).stdout
    assert "3 series, 810 rows; inputs y → targets y" in out
    rows = _read_csv(ok("forecast", tmp_path / "run", data, "--horizon", "3").stdout)
    assert [(r["unique_id"], r["step"]) for r in rows] == [
        (s, str(k)) for s in ("north", "south", "east") for k in (1, 2, 3)
    ]
    assert rows[0]["ds"] == "2024-01-04 03:00:00"  # 300 quarter-hours after 2024-01-01 00:00
    assert rows[3]["ds"] == "2024-01-03 12:00:00"  # south: 240 rows


def test_target_that_is_not_an_input_uses_the_direct_head(tmp_path: Path) -> None:
    data = tmp_path / "wide.csv"
    _wide_frame(300).to_csv(data, index=False)
    ok("train", data, "--time-col", "date", "--inputs", "load", "--targets", "temp", "--out", tmp_path / "run", *TINY)
    run = hs.load_run(tmp_path / "run")
    assert run.inputs == ("load",) and run.targets == ("temp",)
    rows = _read_csv(ok("forecast", tmp_path / "run", data, "--horizon", "4").stdout)
    assert list(rows[0]) == ["unique_id", "step", "ds", "temp"] and len(rows) == 4
    result = invoke("forecast", tmp_path / "run", data, "--horizon", "4", "--method", "rollout")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: rollout needs every target among the inputs, to feed predictions back")


# -- resume ------------------------------------------------------------------------------------


def test_resume_continues_to_epochs_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    common = ["--synthetic-steps", "800", *TINY[2:]]  # no --epochs in common
    ok("train", "--out", tmp_path / "whole", "--epochs", "3", *common)
    ok("train", "--out", tmp_path / "split", "--epochs", "1", *common)
    out = ok("train", "--out", tmp_path / "split", "--resume", "--epochs", "3").stdout
    assert "(resuming)" in out and "trained to epoch 3" in out
    whole, split = (tmp_path / d / "model.safetensors" for d in ("whole", "split"))
    assert whole.read_bytes() == split.read_bytes()
    epochs = [r["epoch"] for r in csv.DictReader((tmp_path / "split" / "metrics.csv").read_text().splitlines())]
    assert epochs == ["1", "2", "3"]


def test_resume_refuses_a_changed_model_setting(tmp_path: Path) -> None:
    ok("train", "--out", tmp_path / "run", "--epochs", "1", "--synthetic-steps", "600", *TINY[2:])
    result = invoke("train", "--out", tmp_path / "run", "--resume", "--hidden", "16")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: Invalid value for --hidden: 16 differs from the run's [lstm 8]; a resumed run keeps its data and "
        "model settings (see 'hiddenstate train --help')\n"
    )


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "0"], "Invalid value for '--epochs': Input should be greater than or equal to 1"),
        (["train", "--cell", "xyz"], "Invalid value for '--cell': 'xyz' is not one of 'lstm', 'gru', 'rnn'."),
        (
            ["train", "--hidden", "64,x"],
            "Invalid value for --hidden: expected comma-separated hidden sizes like 64,32 (or cell:size like "
            "lstm:64,gru:32), got '64,x'",
        ),
        (["train", "--epoch", "3"], "No such option: --epoch (Possible options: --epochs)"),
        (
            ["train", "--split", "0.5,0.5,0"],
            "Invalid value for --split: expected train,val,test fractions like 0.7,0.1,0.2 (test > 0, sum <= 1) "
            "or 'ett', got '0.5,0.5,0'",
        ),
        (["inspect"], "Invalid value for RUN_DIR: give a RUN_DIR or --spec, not both and not neither"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {message} (see 'hiddenstate {args[0]} --help')\n"
    assert result.stdout == ""


def test_out_holding_a_run_needs_resume(csv_run: tuple[Path, Path]) -> None:
    _, run_dir = csv_run
    result = invoke("train", "--out", run_dir)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: Invalid value for --out: {run_dir} already holds a run; pass --resume to continue it, "
        "or choose another --out (see 'hiddenstate train --help')\n"
    )


def test_bad_data_exits_1_naming_file_column_and_row(tmp_path: Path) -> None:
    frame = _wide_frame(50)
    frame["temp"] = frame["temp"].astype(object)
    frame.loc[6, "temp"] = "oops"
    data = tmp_path / "bad.csv"
    frame.to_csv(data, index=False)
    result = invoke("train", data, "--time-col", "date", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {data}: column 'temp', data row 7: non-numeric value 'oops'\n"
    assert "Traceback" not in result.output


def test_train_backend_and_precision_options(tmp_path: Path) -> None:
    out = ok("train", "--out", tmp_path / "fused", "--backend", "fused", "--synthetic-steps", "600", *TINY).stdout
    assert "trained to epoch 2" in out and "Test split: 8-step forecasts from" in out
    assert hs.load_run(tmp_path / "fused").config["backend"] == "fused"  # trained with the option given
    # and resuming it with the other backend is refused, naming both (a backend changes the results)
    result = invoke("train", "--out", tmp_path / "fused", "--resume", "--epochs", "3", "--backend", "torch")
    listing = tmp_path / "fused" / "checkpoints" / "epoch-0002" / "checkpoint.json"
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {listing}: cannot resume with backend 'torch': the checkpoint was trained with 'fused'; "
        "a resumed run continues the same training (only epochs and patience may grow)\n",
    )
    result = invoke("train", "--out", tmp_path / "gru", "--backend", "fused", "--cell", "gru", *TINY)
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: layer 0 (gru, hidden 8): the fused backend runs lstm layers only; use backend 'torch' for this stack\n",
    )
    result = invoke("train", "--out", tmp_path / "bf16", "--precision", "bf16", "--device", "cpu", *TINY)
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: TrainConfig.precision 'bf16' is mixed precision for CUDA; the device is cpu: use 'fp32'\n",
    )
    result = invoke("train", "--out", tmp_path / "x", "--precision", "fp8", *TINY)
    assert result.exit_code == 2 and "fp8" in result.output


def test_missing_columns_and_runs_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "wide.csv"
    _wide_frame(50).to_csv(data, index=False)
    result = invoke("train", data, "--time-col", "date", "--targets", "OT", "--out", tmp_path / "run")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {data}: column 'OT' not found; the dataset has columns load, temp\n",
    )
    result = invoke("train", data, "--time-col", "date", "--horizon", "10", "--out", tmp_path / "run")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --horizon 10 does not fit the test split (10 rows in the longest series); use a shorter --horizon "
        "or a larger test fraction in --split\n",
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written
    result = invoke("evaluate", tmp_path / "nowhere")
    assert (result.exit_code, result.stderr) == (1, f"Error: {tmp_path / 'nowhere'}: run directory not found\n")


def test_commands_of_other_modules_load_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import hiddenstate.cli.commands as cli

    fake = types.ModuleType("fake_commands")

    def register(target: object) -> None:
        @target.command("hello")  # type: ignore[attr-defined]
        def hello(name: str = "state") -> None:
            """Say hello."""
            print(f"hello {name}")

    fake.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_commands", fake)
    monkeypatch.setitem(cli.LAZY_COMMANDS, "hello", "fake_commands")
    assert ok("hello", "--name", "lanes").stdout == "hello lanes\n"
    assert "serve" in cli.LAZY_COMMANDS and "benchmark" in cli.LAZY_COMMANDS


def test_help_has_examples() -> None:
    out = ok("train", "--help").stdout
    assert "Examples" in out and "hiddenstate train --out runs/demo --resume --epochs 90" in out
    assert "--state-policy" in out and "--batch-size" in out
    for command in ("evaluate", "forecast", "plot", "inspect"):
        assert "Examples" in ok(command, "--help").stdout


def test_train_on_ett_with_its_standard_split(ett_dir: Path, tmp_path: Path) -> None:
    out = ok(
        "train",
        ett_dir / "ETTh1.csv",
        "--time-col",
        "date",
        "--targets",
        "OT",
        "--split",
        "ett",
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--horizon",
        "24",
        "--no-plots",
    ).stdout
    assert "inputs HUFL, HULL, MUFL, MULL, LUFL, LULL, OT → targets OT" in out
    assert "model (direct)" in out and "repeat last value" in out
    settings = hs.load_run(tmp_path / "run").extra["settings"]
    assert settings["split"] == "ett" and settings["targets"] == ["OT"]


# -- the main job and a real process -----------------------------------------------------------


def test_main_job_on_synthetic_data_beats_repeat_last(tmp_path: Path) -> None:
    """`hiddenstate train` with no data, smaller: it must beat the baseline and draw both pictures."""
    run_dir = tmp_path / "main"
    args = ["--out", run_dir, "--synthetic-steps", "2400", "--epochs", "8", "--hidden", "16", "--horizon", "48"]
    out = ok("train", *args).stdout
    assert "✓ The model beats the repeat-last baseline" in out
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["beats_repeat_last"] is True
    assert evaluation["model"]["normalised"]["mse"] < 0.5 * evaluation["repeat_last"]["normalised"]["mse"]
    for name in ("forecast.png", "states.png"):
        assert (run_dir / name).stat().st_size > 10_000


def test_a_real_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hiddenstate",
            "train",
            "--out",
            str(tmp_path / "run"),
            "--synthetic-steps",
            "600",
            *TINY,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "run" / "manifest.json").is_file()


def test_negbin_is_left_to_the_python_api(tmp_path: Path) -> None:
    """The command line standardises every column, which a count likelihood cannot read: it is
    refused before anything is written, not part-way through training."""
    result = invoke("train", "--out", tmp_path / "nb", "--likelihood", "negbin", *TINY)
    assert result.exit_code == 2
    assert "'negbin' is not one of 'studentt', 'normal'" in result.stderr
    assert not (tmp_path / "nb").exists()


NO_EPOCHS = [a for i, a in enumerate(TINY) if a != "--epochs" and (i == 0 or TINY[i - 1] != "--epochs")]


def test_resume_without_epochs_keeps_the_runs_own(tmp_path: Path) -> None:
    """After a Ctrl-C, `--resume` alone continues to the epochs the run was started with, not the
    default 60 (here the run is complete: there is nothing more to train)."""
    ok("train", "--out", tmp_path / "r", "--synthetic-steps", "600", *TINY)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    ok("train", "--out", tmp_path / "r", "--synthetic-steps", "600", "--resume", *NO_EPOCHS)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before  # still 2 epochs


def test_a_relative_data_path_is_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here").mkdir()
    _wide_frame().to_csv(tmp_path / "here" / "wide.csv", index=False)
    monkeypatch.chdir(tmp_path / "here")
    ok("train", "wide.csv", "--time-col", "date", "--out", tmp_path / "run", *TINY)
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its data
    assert "repeat last value" in ok("evaluate", tmp_path / "run").output


def test_the_resume_example_of_train_help_continues_the_run_of_the_example_before_it(tmp_path: Path) -> None:
    import inspect

    from hiddenstate.cli.train import TRAIN_EPILOG, train

    found = re.search(r"--resume --epochs (\d+)", TRAIN_EPILOG)
    assert found and int(found.group(1)) > inspect.signature(train).parameters["epochs"].default  # epochs only grow
    ok("train", "--out", tmp_path / "run", "--synthetic-steps", "600", *TINY)
    result = invoke("train", "--out", tmp_path / "run", "--resume", "--epochs", "1")
    assert result.exit_code == 1
    assert "cannot resume with epochs 1: the checkpoint was trained with 2; epochs may only grow" in result.stderr


def test_lr_help_states_its_bound_once() -> None:
    out = ok("train", "--help").stdout
    assert "above 0" in out and "x>=0.0" not in out  # the bound is x > 0, checked by the command


def test_bounds_of_forecast_horizon_and_lr(csv_run: tuple[Path, Path]) -> None:
    _, run = csv_run
    result = invoke("forecast", run, "--horizon", "100001")
    assert result.exit_code == 2 and "--horizon': Input should be less than or equal to 100000" in result.stderr
    result = invoke("train", "--out", run.parent / "lr0", "--lr", "0", *TINY)
    assert result.exit_code == 2 and result.stderr.startswith("Error: Invalid value for --lr: 0.0 is not above 0")


def test_series_too_short_for_train_or_validation(tmp_path: Path) -> None:
    frame = _long_frame()
    tiny = pd.DataFrame({"unique_id": "tiny", "ds": pd.date_range("2024-01-01", periods=2, freq="15min"), "y": 1.0})
    pd.concat([frame, tiny]).to_parquet(tmp_path / "a.parquet")
    result = invoke(
        "train", tmp_path / "a.parquet", "--layout", "long", "--targets", "y", "--out", tmp_path / "a", *TINY
    )
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'a.parquet'}: series 'tiny' (2 rows): its train split has 1 rows and training needs at "
        "least 3; drop the series or give the train split more in --split\n"
    )
    short = pd.DataFrame({"unique_id": "short", "ds": pd.date_range("2024-01-01", periods=20, freq="15min"), "y": 1.0})
    pd.concat([frame, short]).to_parquet(tmp_path / "b.parquet")
    result = ok("train", tmp_path / "b.parquet", "--layout", "long", "--targets", "y", "--out", tmp_path / "b", *TINY)
    assert (
        "warning: " in result.stderr and "fewer than 3 validation rows" in result.stderr and "'short'" in result.stderr
    )
    assert " val " in result.output  # the other series still give the validation loss


def test_ctrl_c_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hiddenstate.cli import pipeline

    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prepare_training", interrupted)
    result = invoke("train", "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 130
    assert result.stderr == "Error: interrupted (a training run continues with --resume)\n"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["extra"]["settings"].update(split=[0.9, 0.5, 0.5]),
            "manifest.json: extra.settings: run settings: split: expected train, val and test fractions summing to "
            "at most 1, train and test above 0, got [0.9, 0.5, 0.5]",
        ),
        (
            lambda m: m["train_config"].update(epochs="2"),
            "manifest.json: train_config: TrainConfig.epochs: expected an int >= 1, got '2'",
        ),
    ],
    ids=["split-over-1", "epochs-a-string"],
)
def test_a_manifest_field_of_the_wrong_kind_is_refused_by_name(
    csv_run: tuple[Path, Path], tmp_path: Path, edit, message: str
) -> None:
    import json
    import shutil

    _, run = csv_run
    shutil.copytree(run, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    edit(manifest)
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("evaluate", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'run' / message}\n"


def test_a_column_named_twice_and_a_file_given_as_a_run(csv_run: tuple[Path, Path]) -> None:
    data, run = csv_run
    result = invoke("train", data, "--time-col", "date", "--inputs", "load,load", "--out", run.parent / "x", *TINY)
    assert result.exit_code == 2 and "Invalid value for --inputs: 'load' named twice in 'load,load'" in result.stderr
    result = invoke("forecast", data)
    assert (result.exit_code, result.stderr) == (1, f"Error: {data}: is a file, not a run directory\n")


def test_train_ema_option_is_kept_and_continued_on_resume(tmp_path: Path) -> None:
    ok("train", "--out", tmp_path / "run", "--ema", "0.9", "--synthetic-steps", "600", *TINY)
    assert hs.load_run(tmp_path / "run").config["ema"] == 0.9
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch-0002"
    assert (checkpoint / "ema.safetensors").is_file()
    ok("train", "--out", tmp_path / "run", "--resume", "--epochs", "3")  # the run's own ema, not the default
    assert hs.load_run(tmp_path / "run").config["ema"] == 0.9
    result = invoke("train", "--out", tmp_path / "run", "--resume", "--epochs", "4", "--ema", "0.99")
    listing = tmp_path / "run" / "checkpoints" / "epoch-0003" / "checkpoint.json"
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {listing}: cannot resume with ema 0.99: the checkpoint was trained with 0.9; "
        "a resumed run continues the same training (only epochs and patience may grow)\n",
    )
    result = invoke("train", "--out", tmp_path / "bad", "--ema", "1.5", *TINY)
    assert result.exit_code == 2 and "Invalid value for --ema: 1.5 is not between 0 and 1" in result.stderr
    assert not (tmp_path / "bad").exists()

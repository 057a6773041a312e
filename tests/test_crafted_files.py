"""Crafted run directories and checkpoints: every field of the wrong type or shape, weights of the
wrong dtype, missing or extra tensors and absurd sizes give one CheckpointError naming the file and
the field; a hypothesis fuzz of both listings lets no other exception out."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save
from typer.testing import CliRunner

import hiddenstate as hs
from hiddenstate.runs.run import list_checkpoints, load_checkpoint, save_checkpoint


def _model(seed: int = 0) -> hs.SequenceModel:
    torch.manual_seed(seed)
    return hs.SequenceModel(3, 2, [hs.LSTM(8), hs.GRU(4)])


def _save(run: Path) -> Path:
    model = _model()
    scaler = hs.StandardScaler.fit(np.array([[1.0, 10.0, 0.0], [3.0, 14.0, 2.0]]), columns=["a", "b", "c"])
    state = hs.State.zeros(model.state_spec, 3)
    hs.save_run(run, model, scaler=scaler, inputs=["a", "b", "c"], targets=["a", "b"], lane_state=state)
    return run / "manifest.json"


def _edit(listing: Path, change: Any) -> None:
    data = json.loads(listing.read_text())
    change(data)
    listing.write_text(json.dumps(data))


def _set(path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, last = (int(k) if k.isdigit() else k for k in path.split("/"))
        for key in parents:
            data = data[key]
        data[last] = value

    return change


def _replace_file(folder: Path, name: str, data: bytes, listing: str) -> None:
    """Put ``data`` in ``folder/name`` with a listing entry that vouches for it (a crafted run)."""
    (folder / name).write_bytes(data)
    _edit(folder / listing, _set(f"files/{name}", {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


# -- manifest.json fields of the wrong type or shape: one error naming file and field -----------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("inputs", 5, "field 'inputs': expected a list of column names, got int 5"),
        ("inputs", ["a", 1, "c"], "field 'inputs': expected a list of column names, got list ['a', 1, 'c']"),
        ("inputs", ["a", "b"], "field 'scaler': expected 2 means and 2 stds > 0, got 3 means and 3 stds"),
        ("targets", ["a"], "field 'targets': 1 columns for a model with output_size=2"),
        ("targets", "ab", "field 'targets': expected a list of column names, got str 'ab'"),
        ("version", 1, "field 'version': expected a version string, got int 1"),
        ("model", [1], "field 'model': expected a model config object, got list [1]"),
        ("model/input_size", "3", "field 'model': cannot rebuild the model from it: input_size must be"),
        ("model/layers", 7, "field 'model': cannot rebuild the model from it: a StateSpec in JSON is a list"),
        ("spec", {"a": 1}, "field 'spec': a StateSpec in JSON is a list of layers, got dict"),
        (
            "spec",
            [{"cell": "gru", "hidden_size": 8}, {"cell": "gru", "hidden_size": 4}],
            "field 'spec' [gru 8, gru 4] differs from the model config's [lstm 8, gru 4]",
        ),
        ("fingerprint", None, "field 'fingerprint': expected a state spec fingerprint string, got NoneType None"),
        ("scaler", "x", "field 'scaler': expected null or a scaler object, got str 'x'"),
        ("scaler/mean", [1, "2", 3], "field 'scaler.mean': expected a list of finite numbers, got list [1, '2', 3]"),
        ("scaler/std", [1.0, 0.0, 1.0], "field 'scaler': expected 3 means and 3 stds > 0, got 3 means and 3 stds"),
        ("scaler/mean", [1.0, 2.0], "field 'scaler': expected 3 means and 3 stds > 0, got 2 means and 3 stds"),
        ("scaler/columns", ["a"], "field 'scaler.columns': expected null or 3 column names, got list ['a']"),
        ("train_config", [], "field 'train_config': expected null or an object, got list []"),
        ("extra", "x", "field 'extra': expected null or an object, got str 'x'"),
        ("lane_state", {"batch": "3"}, "field 'lane_state': expected null or {\"batch\": N} with N >= 1"),
        ("lane_state", None, "field 'lane_state' is NoneType None, but 'files' lists lane_state.safetensors"),
        ("files/model.safetensors/bytes", -1, "field 'files.model.safetensors.bytes': expected an int >= 0"),
        ("files/model.safetensors/bytes", True, "field 'files.model.safetensors.bytes': expected an int >= 0"),
        ("files/model.safetensors/sha256", "abc", "field 'files.model.safetensors.sha256': expected 64 hex digits"),
        ("files/model.safetensors", [], "field 'files.model.safetensors': expected an object with 'sha256'"),
        ("files", {}, "field 'files' must list model.safetensors"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_or_shape_is_refused(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    listing = _save(tmp_path / "run")
    _edit(listing, _set(path, value))
    with pytest.raises(hs.CheckpointError, match="^" + re.escape(f"{listing}: {message}")):
        hs.load_run(tmp_path / "run")


def test_a_manifest_whose_lane_state_batch_disagrees_with_the_file_is_refused(tmp_path: Path) -> None:
    listing = _save(tmp_path / "run")
    _edit(listing, _set("lane_state/batch", 5))
    with pytest.raises(
        hs.CheckpointError,
        match=re.escape(
            f"{tmp_path / 'run' / 'lane_state.safetensors'}: a state of 3 lanes in torch.float32; expected 5 lanes "
            "(the listing's field 'lane_state') in torch.float32 (the weights' dtype)"
        ),
    ):
        hs.load_run(tmp_path / "run")


# -- the tensors: dtype, missing, extra, absurd declared sizes -----------------------------------


def _weights() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in _model().state_dict().items()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda w: w.update({"head.weight": w["head.weight"].half()}),
            "tensor 'head.weight' is float16 (2, 4), the model's is float32 (2, 4)",
        ),
        (
            lambda w: w.update({"head.bias": torch.zeros(2, dtype=torch.int64)}),
            "tensor 'head.bias' is int64 (2,), the model's is float32 (2,)",
        ),
        (lambda w: w.pop("head.bias"), "missing tensor 'head.bias'"),
        (lambda w: w.update({"planted": torch.zeros(1)}), "unexpected tensor 'planted'"),
        (
            lambda w: w.update({"head.weight": torch.zeros(2, 5)}),
            "tensor 'head.weight' is float32 (2, 5), the model's is float32 (2, 4)",
        ),
    ],
)
def test_weights_of_the_wrong_dtype_or_set_are_refused(tmp_path: Path, change: Any, message: str) -> None:
    _save(tmp_path / "run")
    weights = _weights()
    change(weights)
    _replace_file(tmp_path / "run", "model.safetensors", save(weights), "manifest.json")
    path = tmp_path / "run" / "model.safetensors"
    with pytest.raises(hs.CheckpointError, match="^" + re.escape(f"{path}: weights do not fit the model: {message}")):
        hs.load_run(tmp_path / "run")


def _resize(data: dict[str, Any], hidden: int) -> None:
    """A consistent manifest (config, spec, fingerprint) for a first layer of ``hidden`` units."""
    data["model"]["layers"][0]["hidden_size"] = hidden
    data["spec"][0]["hidden_size"] = hidden
    data["fingerprint"] = hs.StateSpec.from_json(data["spec"]).fingerprint()


def test_absurd_declared_sizes_are_refused_without_allocating(tmp_path: Path) -> None:
    listing = _save(tmp_path / "run")
    # a million units: 4e12 weights, 16 TB if built for real; on the meta device it costs nothing,
    # and the 5 kB weights file it is compared with does not fit it.
    _edit(listing, lambda d: _resize(d, 1_000_000))
    path = tmp_path / "run" / "model.safetensors"
    with pytest.raises(
        hs.CheckpointError,
        match="^"
        + re.escape(
            f"{path}: weights do not fit the model: tensor 'rnn.cells.0.weight_ih_l0' is float32 (32, 3), "
            "the model's is float32 (4000000, 3)"
        ),
    ):
        hs.load_run(tmp_path / "run")
    _edit(listing, lambda d: _resize(d, 10**15))  # even the sizes overflow
    with pytest.raises(
        hs.CheckpointError,
        match="^" + re.escape(f"{listing}: field 'model': cannot rebuild the model from it: ") + ".*overflow",
    ):
        hs.load_run(tmp_path / "run")


def test_a_file_larger_than_recorded_is_refused_unread(tmp_path: Path) -> None:
    _save(tmp_path / "run")
    path = tmp_path / "run" / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size + 2**40)  # a sparse terabyte: reading it would exhaust memory
    with pytest.raises(
        hs.CheckpointError, match=f"^{re.escape(str(path))}: {size + 2**40} bytes, manifest.json records {size}$"
    ):
        hs.load_run(tmp_path / "run")


# -- the command line: one line, exit 1 ----------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
def test_the_cli_reports_a_crafted_manifest_in_one_line(tmp_path: Path, command: str) -> None:
    from hiddenstate.cli.commands import app

    listing = _save(tmp_path / "run")
    _edit(listing, _set("inputs", 5))
    result = CliRunner().invoke(app, [command, str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {listing}: field 'inputs': expected a list of column names, got int 5\n"
    assert result.stdout == ""


# -- checkpoint.json -----------------------------------------------------------------------------


def _checkpoint(run: Path) -> Path:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 5, 3))[0].square().mean().backward()
    optimizer.step()
    return save_checkpoint(
        run,
        epoch=1,
        model=model,
        optimizer=optimizer,
        train_config=hs.TrainConfig(progress=False).to_json(),
        trainer={"history": hs.Trainer(_model(), hs.TrainConfig(progress=False)).history.to_json()},
        lane_state=hs.State.zeros(model.state_spec, 3),
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("epoch", "1", "field 'epoch': expected an int >= 1, got str '1'"),
        ("epoch", 2, "field 'epoch' is 2, but the directory is epoch-0001"),
        ("optimizer", 3, "field 'optimizer': expected an object with 'state' and 'param_groups', got int 3"),
        ("optimizer/state", {"x": {}}, "field 'optimizer.state': expected an object of per-parameter objects"),
        ("optimizer/param_groups", [{"params": "0"}], "field 'optimizer.param_groups': expected a list of objects"),
        ("rng/python", 1, "field 'rng.python': expected [version, [ints], gauss], got int 1"),
        ("rng/numpy", ["MT19937", [1.5], 0, 0, 0.0], "field 'rng.numpy': expected [kind, [624 ints], pos"),
        ("rng/python/1", [1, 2, 3], "field 'rng': not a valid generator state: "),
        ("trainer", [], "field 'trainer': expected an object, got list []"),
        ("train_config", None, "field 'train_config': expected an object, got NoneType None"),
    ],
)
def test_a_checkpoint_field_of_the_wrong_type_or_shape_is_refused(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    folder = _checkpoint(tmp_path)
    listing = folder / "checkpoint.json"
    _edit(listing, _set(path, value))
    with pytest.raises(hs.CheckpointError, match="^" + re.escape(f"{listing}: {message}")):
        load_checkpoint(folder, model=_model())


def test_checkpoint_tensors_of_the_wrong_dtype_or_shape_are_refused(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path)
    weights = _weights()
    weights["head.weight"] = weights["head.weight"].double()
    _replace_file(folder, "best.safetensors", save(weights), "checkpoint.json")
    with pytest.raises(
        hs.CheckpointError,
        match=re.escape(f"{folder / 'best.safetensors'}: weights do not fit the model: tensor 'head.weight' is "),
    ):
        load_checkpoint(folder)  # without a model: checked against the one its config describes
    (folder / "best.safetensors").unlink()
    _edit(folder / "checkpoint.json", lambda d: d["files"].pop("best.safetensors"))
    from safetensors.torch import load

    opt = load((folder / "optimizer.safetensors").read_bytes())
    opt["state.0.exp_avg"] = torch.zeros(5, 5)
    _replace_file(folder, "optimizer.safetensors", save(opt), "checkpoint.json")
    with pytest.raises(
        hs.CheckpointError,
        match=re.escape(
            f"{folder / 'optimizer.safetensors'}: tensor 'state.0.exp_avg' is float32 (5, 5), its parameter's is "
            "float32 (32, 3)"
        ),
    ):
        load_checkpoint(folder, model=_model())


def test_a_crafted_trainer_history_is_refused_on_resume(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path)
    _edit(folder / "checkpoint.json", _set("trainer/history/rows", [{"epoch": 1, "train_loss": "low"}]))
    with pytest.raises(
        hs.CheckpointError,
        match="^"
        + re.escape(
            f"{folder / 'checkpoint.json'}: field 'trainer.history.rows[0].train_loss': expected a number, got str"
        ),
    ):
        hs.Trainer(_model(), hs.TrainConfig(progress=False)).fit([], run_dir=tmp_path, resume=True)


# -- the fuzz: nothing but CheckpointError gets out ----------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["lstm", "gru", "sequence", "segrnn", "standard", "cond:2", "learned", "a", "b", "c"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def _mutate(data: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    """Replace (or delete) the entry at ``path``, when an earlier mutation left it there."""
    node = data
    for key in path[:-1]:
        if not _has(node, key):
            return
        node = node[key]
    if not _has(node, path[-1]):
        return
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _mutations(original: dict[str, Any]) -> st.SearchStrategy[list[tuple[tuple[Any, ...], Any, bool]]]:
    # the long RNG key lists are sampled as a whole, not per element, so mutations land everywhere else
    paths = [p for p in _paths(original) if not (len(p) > 3 and p[0] == "rng")]
    return st.lists(st.tuples(st.sampled_from(paths), _JSON, st.booleans()), min_size=1, max_size=3)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    _save(run)
    return run


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_raise_nothing_but_checkpoint_error(saved_run: Path, data: st.DataObject) -> None:
    listing = saved_run / "manifest.json"
    original = json.loads(listing.read_text())
    crafted = copy.deepcopy(original)
    for path, value, delete in data.draw(_mutations(original)):
        _mutate(crafted, path, value, delete)
    listing.write_text(json.dumps(crafted))
    try:
        hs.load_run(saved_run)
    except hs.CheckpointError as e:
        assert "\n" not in str(e)
    finally:
        listing.write_text(json.dumps(original))


def _lanes() -> hs.StatefulBatches:
    x = np.random.default_rng(0).normal(size=(40, 3))
    return hs.StatefulBatches([x], [x[:, :2]], batch_size=3, steps=8)


FUZZ_CONFIG = {"progress": False, "keep_checkpoints": None, "threads": 1}


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint the Trainer wrote after one epoch, of a run meant to last two."""
    run = tmp_path_factory.mktemp("fuzz_ckpt")
    stop = [lambda trainer, row: setattr(trainer, "should_stop", True)]
    hs.Trainer(_model(), hs.TrainConfig(epochs=2, **FUZZ_CONFIG)).fit(_lanes(), run_dir=run, callbacks=stop)
    return list_checkpoints(run)[0]


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoint_listings_raise_nothing_but_checkpoint_error(
    saved_checkpoint: Path, data: st.DataObject
) -> None:
    listing = saved_checkpoint / "checkpoint.json"
    original = json.loads(listing.read_text())
    crafted = copy.deepcopy(original)
    for path, value, delete in data.draw(_mutations(original)):
        _mutate(crafted, path, value, delete)
    listing.write_text(json.dumps(crafted))
    run = saved_checkpoint.parent.parent
    assert list_checkpoints(run) == [saved_checkpoint]
    try:
        for model in (None, _model()):
            try:
                load_checkpoint(saved_checkpoint, model=model)
            except hs.CheckpointError as e:
                assert "\n" not in str(e)
        try:  # resumed and trained for the second epoch, optimizer steps and all
            hs.Trainer(_model(), hs.TrainConfig(epochs=2, **FUZZ_CONFIG)).fit(_lanes(), run_dir=run, resume=True)
        except (hs.CheckpointError, hs.ConfigError) as e:  # ConfigError: a refused change of the train config
            assert "\n" not in str(e)
    finally:
        listing.write_text(json.dumps(original))
        for later in list_checkpoints(run)[1:]:
            shutil.rmtree(later)


# -- the command line under the same fuzz: exit 0 or one line and exit 1, never a traceback --------

_SETTING_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2000) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hiddenstate.cli.commands import app

    run = tmp_path_factory.mktemp("cli_fuzz") / "run"
    args = ["train", "--out", str(run), "--epochs", "1", "--hidden", "8", "--steps", "24", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--horizon", "8", "--no-plots", "--synthetic-steps", "600"])
    assert result.exit_code == 0, result.output
    return run


def test_the_cli_reports_a_crafted_checkpoint_in_one_line(cli_run: Path) -> None:
    from hiddenstate.cli.commands import app

    listing = cli_run / "checkpoints" / "epoch-0001" / "checkpoint.json"
    original = listing.read_text()
    _edit(listing, _set("optimizer/param_groups", {"lr": 1}))
    try:
        result = CliRunner().invoke(app, ["train", "--out", str(cli_run), "--resume", "--epochs", "2"])
    finally:
        listing.write_text(original)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {listing}: field 'optimizer.param_groups': expected a list of objects with int 'params', "
        "got dict {'lr': 1}\n"
    )
    assert [p.name for p in list_checkpoints(cli_run)] == ["epoch-0001"]  # nothing trained or written


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_cli_settings_give_one_line_or_success(cli_run: Path, data: st.DataObject) -> None:
    from hiddenstate.cli.commands import app

    listing = cli_run / "manifest.json"
    original = json.loads(listing.read_text())
    crafted = copy.deepcopy(original)
    names = sorted(crafted["extra"]["settings"])
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        crafted["extra"]["settings"][name] = data.draw(_SETTING_VALUES)
    listing.write_text(json.dumps(crafted))
    try:
        for command in (["evaluate", str(cli_run)], ["forecast", str(cli_run), "--horizon", "4"]):
            result = CliRunner().invoke(app, command)
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert result.exit_code in (0, 1), result.output
            if result.exit_code == 1:
                assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    finally:
        listing.write_text(json.dumps(original))


def test_a_checkpoint_lane_state_of_another_dtype_is_refused(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path)
    state = hs.State.zeros(_model().state_spec, 3, dtype=torch.float64)
    data = save(state.to_dict(), metadata={"fingerprint": state.spec.fingerprint()})
    _replace_file(folder, "lane_state.safetensors", data, "checkpoint.json")
    path = folder / "lane_state.safetensors"
    with pytest.raises(
        hs.CheckpointError,
        match="^"
        + re.escape(f"{path}: a state of 3 lanes in torch.float64; expected 3 lanes ")
        + r".* in torch.float32 ",
    ):
        load_checkpoint(folder, model=_model())


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "optimizer/param_groups/0/betas",
            [0.5, 0.5],
            "field 'optimizer.param_groups[0].betas': (0.5, 0.5) differs from the optimizer's (0.9, 0.999)",
        ),
        ("optimizer/param_groups/0/lr", -1, "field 'optimizer.param_groups[0].lr': expected a number > 0, got -1"),
        ("optimizer/param_groups/0/params", [0], "field 'optimizer.param_groups': does not fit the optimizer: "),
        (
            "trainer/history/rows/0/val_loss",
            "low",
            "field 'trainer.history.rows[0].val_loss': expected a number or null, got str 'low'",
        ),
    ],
)
def test_optimizer_and_history_fields_are_checked_on_resume(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    stop = [lambda trainer, row: setattr(trainer, "should_stop", True)]
    hs.Trainer(_model(), hs.TrainConfig(epochs=2, **FUZZ_CONFIG)).fit(_lanes(), run_dir=tmp_path, callbacks=stop)
    listing = list_checkpoints(tmp_path)[0] / "checkpoint.json"
    _edit(listing, _set(path, value))
    with pytest.raises(hs.CheckpointError, match="^" + re.escape(f"{listing}: {message}")):
        hs.Trainer(_model(), hs.TrainConfig(epochs=2, **FUZZ_CONFIG)).fit(_lanes(), run_dir=tmp_path, resume=True)

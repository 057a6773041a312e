"""The pipeline behind the command line: from a run's *settings* to data, a trained run and scores.

A run's settings are one frozen :class:`~hiddenstate.cli.settings.RunSettings` (``data``,
``layout``, ``inputs``, ``targets``, ``split``, ``layers``, ``steps``, ``batch_size``,
``state_policy``, ``horizon``, ``seed``, ...) that ``hiddenstate train`` builds from its flags,
writes to ``RUN_DIR/train_args.json`` before training (so ``--resume`` can check it) and keeps in
the manifest's ``extra["settings"]`` (so ``evaluate``, ``forecast`` and ``plot`` can rebuild the
same data)::

    settings ──load_data──> Dataset ──parts──> train/val/test arrays ──> StatefulBatches
             ──prepare_training──> TrainJob ──train_run──> RUN_DIR (checkpoints, manifest)
    RUN_DIR  ──load──> (Run, settings, Dataset) ──evaluate / forecast_csv / write_plots

Nothing here parses flags or prints: :mod:`hiddenstate.cli.commands` does both. The heavy modules
(torch, the data readers, plots) are imported on first use, so ``hiddenstate --help`` stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hiddenstate.cli.settings import RunSettings
from hiddenstate.errors import CheckpointError, ConfigError, DataError, HiddenStateError
from hiddenstate.state import StateSpec

if TYPE_CHECKING:
    from hiddenstate.model import SequenceModel
    from hiddenstate.train.trainer import Callback, History, TrainConfig, Trainer

__all__ = [
    "ARGS_FILE",
    "TrainJob",
    "check_horizon",
    "columns",
    "evaluate",
    "evaluate_methods",
    "forecast_csv",
    "holds_run",
    "load",
    "load_data",
    "parts",
    "prepare_training",
    "read_args",
    "run_settings",
    "set_threads",
    "split",
    "train_run",
    "write_evaluation",
    "write_plots",
]

ARGS_FILE = "train_args.json"  # the data and model settings of a run, written before training starts


def set_threads(spec: StateSpec, threads: int | None) -> None:
    """Use ``threads`` CPU threads, or the Trainer's rule for a model of ``spec``
    (:func:`hiddenstate.train.default_threads`: 1 for small models, else every core)."""
    import torch

    from hiddenstate.train.trainer import default_threads

    torch.set_num_threads(threads or default_threads(spec))


# -- data ---------------------------------------------------------------------------------------


def load_data(settings: RunSettings) -> Any:
    """The Dataset a run's ``settings`` name: a file, or the built-in synthetic data."""
    from hiddenstate.data import read_dataset, synthetic_dataset

    if settings.data is None:
        return synthetic_dataset(n_steps=settings.synthetic_steps, seed=settings.synthetic_seed)
    return read_dataset(
        settings.data,
        time_col=settings.time_col,
        id_col=settings.id_col,
        ds_col=settings.ds_col,
        layout=settings.layout,
        fill=settings.fill,
    )


def columns(dataset: Any, settings: RunSettings) -> tuple[list[str], list[str]]:
    """Input and target column names (default: every column; the targets default to the inputs)."""
    inputs = list(settings.inputs or dataset.columns)
    targets = list(settings.targets or inputs)
    dataset.column_indices([*inputs, *targets])  # DataError naming the file and the missing column
    return inputs, targets


def split(settings: RunSettings) -> Any:
    """The Split the settings name: train/val/test fractions, or ETT's standard borders."""
    from hiddenstate.data import Split

    if settings.split == "ett":  # ETT's standard 12/4/4-month borders, by the file's name
        return Split.ett(Path(settings.data or "synthetic").name, seq_len=0)
    return Split(fractions=tuple(settings.split))


def parts(dataset: Any, settings: RunSettings, which: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Input and target arrays of split part ``which`` (0 train, 1 val, 2 test) of every series."""
    inputs, targets = columns(dataset, settings)
    part = dataset.split(split(settings))[which]
    return part.arrays(inputs), part.arrays(targets)


def check_horizon(dataset: Any, settings: RunSettings, train_x: list[np.ndarray]) -> None:
    """Refuse a horizon the splits cannot hold before training, not after it."""
    horizon = settings.horizon
    tests = [stop - start for start, stop in (split(settings).ranges(n)[2] for n in dataset.lengths)]
    if max(tests) < horizon + 1:
        raise ConfigError(
            f"--horizon {horizon} does not fit the test split ({max(tests)} rows in the longest series); "
            "use a shorter --horizon or a larger test fraction in --split"
        )
    if max(len(x) for x in train_x) < horizon + 2:
        raise ConfigError(f"--horizon {horizon} does not fit the train split ({max(len(x) for x in train_x)} rows)")


# -- training -----------------------------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything :func:`train_run` needs, made by :func:`prepare_training` from a run's settings.

    ``settings`` carries the resolved ``inputs`` and ``targets``; ``train_x``/``train_y`` are the
    normalised training arrays (the direct head is fitted on them after training).
    """

    settings: RunSettings
    dataset: Any
    inputs: list[str]
    targets: list[str]
    scaler: Any
    target_scaler: Any
    train_x: list[np.ndarray]
    train_y: list[np.ndarray]
    train_batches: Any
    val_batches: Any
    model: SequenceModel
    config: TrainConfig


def prepare_training(
    settings: RunSettings,
    *,
    epochs: int,
    patience: int | None,
    device: str,
    threads: int | None,
    progress: bool,
    backend: str = "torch",
    precision: str = "fp32",
    ema: float | None = None,
) -> TrainJob:
    """Read the data, fit the scalers on the train split, lay out the batches and build the model.

    Sets the CPU threads and seeds torch with ``settings.seed`` before building the model, so
    a CPU run is deterministic.
    """
    import torch

    from hiddenstate.data import StandardScaler, StatefulBatches
    from hiddenstate.model import SequenceModel
    from hiddenstate.train.trainer import TrainConfig

    dataset = load_data(settings)
    in_cols, out_cols = columns(dataset, settings)
    settings = settings.replace(inputs=tuple(in_cols), targets=tuple(out_cols))
    train_x, train_y = parts(dataset, settings, 0)
    for sid, n, x in zip(dataset.ids, dataset.lengths, train_x, strict=True):
        if len(x) < 3:
            raise DataError(
                f"{dataset.source}: series {sid!r} ({n} rows): its train split has {len(x)} rows and training "
                "needs at least 3; drop the series or give the train split more in --split"
            )
    check_horizon(dataset, settings, train_x)
    val_x, val_y = parts(dataset, settings, 1)
    scaler = StandardScaler.fit(train_x, columns=in_cols)
    target_scaler = StandardScaler.fit(train_y, columns=out_cols)
    norm = lambda xs, sc: [sc.transform(a) for a in xs]  # noqa: E731
    bs, steps = settings.batch_size, settings.steps
    train_batches = StatefulBatches(norm(train_x, scaler), norm(train_y, target_scaler), bs, steps)
    # validation over the series whose val split holds at least 3 rows (the others are named once)
    keep = [k for k, a in enumerate(val_x) if len(a) >= 3]
    short = [dataset.ids[k] for k in range(len(val_x)) if k not in set(keep)]
    if short and keep:
        warnings.warn(
            f"{dataset.source}: {len(short)} series with fewer than 3 validation rows left out of the validation "
            f"loss: {', '.join(map(repr, short[:5]))}{' ...' if len(short) > 5 else ''}",
            UserWarning,
            stacklevel=2,
        )
    val_x, val_y = [val_x[k] for k in keep], [val_y[k] for k in keep]
    val_batches = StatefulBatches(norm(val_x, scaler), norm(val_y, target_scaler), bs, steps) if keep else None

    set_threads(settings.spec, threads)
    torch.manual_seed(settings.seed)
    policy = settings.state_policy
    model = SequenceModel(
        len(in_cols),
        len(out_cols),
        settings.spec,
        dropout=settings.dropout,
        state_encoder=f"cond:{len(in_cols)}" if "encode" in policy else None,
        horizon=0 if settings.likelihood else settings.horizon,  # a likelihood model rolls out its mean
        likelihood=settings.likelihood,
    )
    config = TrainConfig(
        epochs=epochs,
        lr=settings.lr,
        loss=settings.loss,
        patience=patience,
        ema=ema,
        state_policy=policy,
        seed=settings.seed,
        device=device,
        threads=threads,
        progress=progress,
        backend=backend,
        precision=precision,
    )
    return TrainJob(
        settings=settings,
        dataset=dataset,
        inputs=in_cols,
        targets=out_cols,
        scaler=scaler,
        target_scaler=target_scaler,
        train_x=norm(train_x, scaler),
        train_y=norm(train_y, target_scaler),
        train_batches=train_batches,
        val_batches=val_batches,
        model=model,
        config=config,
    )


def holds_run(out: Path) -> bool:
    """True when ``out`` already holds a run (a checkpoint or a manifest)."""
    from hiddenstate.runs.run import list_checkpoints

    return bool(list_checkpoints(out)) or (out / "manifest.json").exists()


def train_run(
    job: TrainJob, out: Path, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> tuple[Trainer, History]:
    """Train ``job`` into the run directory ``out`` (continuing it with ``resume``), fit the direct
    head, and save the run with the settings in ``extra``; returns the Trainer and its History."""
    from hiddenstate.distributed import rank
    from hiddenstate.forecast import fit_direct_head
    from hiddenstate.runs.run import atomic_write, save_run
    from hiddenstate.train.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    if rank() == 0:  # under torchrun rank 0 alone writes the run directory
        atomic_write(out / ARGS_FILE, (json.dumps(job.settings.to_json(), indent=1) + "\n").encode())
    trainer = Trainer(job.model, job.config)
    history = trainer.fit(job.train_batches, job.val_batches, run_dir=out, resume=resume, callbacks=callbacks)
    if rank() != 0:
        return trainer, history
    job.model.eval()
    if job.model.direct_head is not None:
        fit_direct_head(job.model, job.train_x, job.train_y)
    save_run(
        out,
        job.model,
        scaler=job.scaler,
        target_scaler=job.target_scaler,
        inputs=job.inputs,
        targets=job.targets,
        train_config=job.config,
        lane_state=trainer.lane_state,
        extra={"settings": job.settings.to_json(), "best_epoch": history.best_epoch},
        distributed=trainer.distributed.layout() if trainer.distributed is not None else None,
    )
    return trainer, history


# -- a saved run --------------------------------------------------------------------------------


def read_args(run_dir: Path) -> RunSettings | None:
    """The settings in ``run_dir/train_args.json``, or None when there is none."""
    path = run_dir / ARGS_FILE
    if not path.is_file():
        return None
    try:
        return RunSettings.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HiddenStateError(f"{path}: not valid JSON: {e}") from None
    except ConfigError as e:
        raise HiddenStateError(f"{path}: {e}") from None


def _saved_settings(run: Any) -> dict[str, Any] | None:
    settings = run.extra.get("settings")
    return settings if isinstance(settings, dict) else None


def run_settings(run: Any) -> RunSettings:
    """The settings a run was trained with (saved by ``hiddenstate train``)."""
    settings = _saved_settings(run)
    if settings is None:
        raise CheckpointError(
            f"{run.path / 'manifest.json'}: has no data settings (it was not saved by `hiddenstate train`); "
            "pass the DATA file"
        )
    try:
        return RunSettings.from_json(settings)
    except ConfigError as e:
        raise CheckpointError(f"{run.path / 'manifest.json'}: extra.settings: {e}") from None


def load(run_dir: Path, data: Path | None, overrides: dict[str, Any]) -> tuple[Any, RunSettings, Any]:
    """``(run, settings, dataset)``: the run, its settings (with ``data`` as the data file when
    given, and the non-None ``overrides``) and the Dataset they name."""
    from hiddenstate.runs.run import load_run

    run = load_run(run_dir)
    set_threads(run.spec, None)
    if data is None:
        settings = run_settings(run)
    else:
        try:
            settings = RunSettings.from_json({**(_saved_settings(run) or {}), "data": str(data)})
        except ConfigError as e:
            raise CheckpointError(f"{run.path / 'manifest.json'}: extra.settings: {e}") from None
    settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
    if settings.inputs is None:
        settings = settings.replace(inputs=tuple(run.inputs))
    if settings.targets is None:
        settings = settings.replace(targets=tuple(run.targets))
    return run, settings, load_data(settings)


# -- scores, forecasts, plots -------------------------------------------------------------------


def evaluate(run: Any, dataset: Any, settings: RunSettings, horizon: int, method: str) -> Any:
    """The :class:`~hiddenstate.forecast.Evaluation` of ``method`` on the test split of every series."""
    from hiddenstate.forecast import evaluate_forecasts

    inputs, targets = columns(dataset, settings)
    regions = [split(settings).ranges(n)[2] for n in dataset.lengths]
    carried = settings.state_policy in ("carry", "carry+encode")
    return evaluate_forecasts(
        run,
        dataset.arrays(inputs),
        dataset.arrays(targets),
        regions,
        horizon,
        method,
        lookback=None if carried else settings.steps,
    )


def evaluate_methods(run: Any, dataset: Any, settings: RunSettings, horizon: int, method: str) -> dict[str, Any]:
    """Evaluations by method, ``method``'s first; ``"auto"`` that resolves to the direct head also
    scores the rollout, when both can forecast the targets."""
    from hiddenstate.forecast import resolve_method, target_indices

    tidx = target_indices(run.inputs, run.targets)
    methods = [method]
    if tidx is None:  # some target is not an input: only the direct head can forecast
        tidx = ()
    if method == "auto" and resolve_method(run.model, "auto", horizon, tidx) == "direct" and tidx:
        methods = ["direct", "rollout"]  # show both when both work
    return {m: evaluate(run, dataset, settings, horizon, m) for m in methods}


def write_evaluation(out: Path, evaluation: Any) -> Path:
    """Write ``out/evaluation.json`` atomically; returns its path."""
    from hiddenstate.runs.run import atomic_write

    path = out / "evaluation.json"
    atomic_write(path, (json.dumps(evaluation.to_json(), indent=1) + "\n").encode())
    return path


def forecast_csv(run: Any, dataset: Any, settings: RunSettings, horizon: int, method: str) -> str:
    """CSV text of ``horizon`` steps past the end of every series, in original units:
    ``unique_id, step, ds`` (when every series is timed), one column per target."""
    inputs, _ = columns(dataset, settings)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    has_time = all(s.time is not None and len(s.time) >= 2 for s in dataset.series)
    writer.writerow(["unique_id", "step", *(["ds"] if has_time else []), *run.targets])
    for s, x in zip(dataset.series, dataset.arrays(inputs), strict=True):
        pred = run.forecast(x, horizon, method)[0]  # (horizon, n_targets), original units
        times: list[Any] = []
        if has_time:
            step = s.time[-1] - s.time[-2]
            times = [str(s.time[-1] + step * (k + 1)).replace("T", " ") for k in range(horizon)]
            if np.issubdtype(s.time.dtype, np.datetime64):
                times = [
                    str(np.datetime64(t, "s")).replace("T", " ") for t in s.time[-1] + step * np.arange(1, horizon + 1)
                ]
        for k in range(horizon):
            writer.writerow([s.id, k + 1, *([times[k]] if has_time else []), *(repr(float(v)) for v in pred[k])])
    return buf.getvalue()


BAND_LEVELS = (50, 90)


def forecast_bands(
    run: Any, dataset: Any, settings: RunSettings, evaluation: Any, num_samples: int = 200, seed: int = 0
) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """For a likelihood model, the central 50% and 90% intervals of ``num_samples`` sample paths
    from the plotted forecast's origin (``{level: (lo, hi)}``, each ``(horizon, n_targets)``, in
    original units); None for a point model, an encoder model, or one whose targets are not all
    inputs (a path feeds each draw back)."""
    from hiddenstate.forecast import _encoder_size, target_indices
    from hiddenstate.metrics import central_interval

    s = evaluation.sample
    if getattr(run.model, "likelihood", None) is None or "origin" not in s or _encoder_size(run.model):
        return None
    inputs, _ = columns(dataset, settings)
    tidx = target_indices(run.inputs, run.targets)
    if tidx is None or len(tidx) != len(run.targets):
        return None
    o, horizon = int(s["origin"]), int(s["truth"].shape[0])
    carried = settings.state_policy in ("carry", "carry+encode")
    first = 0 if carried else max(0, o - settings.steps)  # the rows its state reads, as the evaluation's
    x = dataset.arrays(inputs)[int(s["series"])][first : o + 1]
    qs = [q for v in BAND_LEVELS for q in central_interval(v)]
    out = run.forecast(x, horizon, quantiles=qs, num_samples=num_samples, seed=seed)[:, 0]  # (2 * levels, H, n)
    return {v: (out[2 * k], out[2 * k + 1]) for k, v in enumerate(BAND_LEVELS)}


def write_plots(run: Any, dataset: Any, settings: RunSettings, evaluation: Any, out_dir: Path) -> list[Path]:
    """``forecast.png`` from the evaluation's sample (with the paths' 50% and 90% intervals for a
    likelihood model) and ``states.png`` over the start of the first series."""
    from hiddenstate.cli.plots import plot_forecast, plot_states

    inputs, _ = columns(dataset, settings)
    s = evaluation.sample
    paths = [
        plot_forecast(
            out_dir / "forecast.png",
            s["history"],
            s["truth"],
            s["pred"],
            list(run.targets),
            baseline=s["baseline"],
            bands=forecast_bands(run, dataset, settings, evaluation),
            title=f"{evaluation.method} forecast on the test split vs truth ({Path(dataset.source).name})",
        )
    ]
    x = run.scaler.transform(dataset.arrays(inputs)[0][: settings.plot_steps])
    paths.append(
        plot_states(
            out_dir / "states.png",
            run.model,
            x,
            inputs,
            title=f"hidden state of {run.spec.describe()} from the initial state over {len(x)} steps "
            f"of series {dataset.series[0].id!r}",
        )
    )
    return paths

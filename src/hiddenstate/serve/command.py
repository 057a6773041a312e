"""``hiddenstate serve RUN_DIR``: the command that starts the service.

:func:`register` adds the command to a typer app (the ``hiddenstate`` command line calls it);
``python -m hiddenstate.serve RUN_DIR ...`` runs the same command on its own.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from hiddenstate._extras import require

if TYPE_CHECKING:
    import typer
else:
    typer = require("typer", "cli")

__all__ = ["build_service", "register", "serve", "worker_app"]

Sync = Literal["full", "normal"]
DurabilityMode = Literal["strict", "relaxed"]
DEFAULT_STORE_FILE = "states.db"


def build_service(
    run_dir: str | Path,
    store: str | None = None,
    *,
    sync: str = "full",
    ttl: float | None = None,
    max_batch: int = 1024,
    max_wait_ms: float = 2.0,
    max_body_mb: float = 16.0,
    durability: str = "strict",
    engine: str = "torch",
    metrics: Any = None,
) -> Any:
    """Load the run, open the store (checking its fingerprint and durability), build the :class:`~.service.Service`."""
    from hiddenstate.errors import ServeError, StoreUnavailableError
    from hiddenstate.runs.run import load_run
    from hiddenstate.serve.served import ServedModel
    from hiddenstate.serve.service import Limits, Service
    from hiddenstate.serve.stores import open_store

    run = load_run(run_dir)
    if engine == "onnx":  # model(x, state) in onnxruntime, checked against the torch model first
        from hiddenstate.serve.onnx_engine import onnx_engine

        run.model = onnx_engine(run.model)
    elif engine != "torch":
        raise ServeError(f"engine {engine!r}: expected 'torch' or 'onnx'")
    served = ServedModel.from_run(run)
    url = store if store is not None else f"sqlite://{(Path(run_dir).resolve() / DEFAULT_STORE_FILE)}"
    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024))
    try:
        states = open_store(url, ttl=ttl, sync=sync, durability=durability)
    except StoreUnavailableError as e:
        raise ServeError(f"store {e.store}: cannot be opened: {e.reason}") from None
    try:
        return Service(served, states, max_batch=max_batch, max_wait=max_wait_ms / 1000, limits=limits, metrics=metrics)
    except StoreUnavailableError as e:
        states.close()
        raise ServeError(f"store {states.url}: cannot be used: {e.reason}") from None
    except BaseException:
        states.close()
        raise


def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by 'hiddenstate train' (save_run).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    store: Annotated[
        str | None,
        typer.Option(
            help="Where states live: sqlite:///path/states.db (default: states.db in RUN_DIR) or "
            "redis://host:port/db for several replicas sharing one store."
        ),
    ] = None,
    sync: Annotated[
        Sync,
        typer.Option(
            help="SQLite durability: 'full' fsyncs every commit (survives power loss); 'normal' is faster and "
            "survives a killed process but may lose the last commits on power loss."
        ),
    ] = "full",
    durability: Annotated[
        DurabilityMode,
        typer.Option(
            help="'strict' refuses a Redis whose acknowledged updates would not survive a crash of Redis (anything "
            "weaker than appendonly yes + appendfsync always, checked at startup and on every reconnect); "
            "'relaxed' serves on it anyway. Reported in /healthz and /metrics."
        ),
    ] = "strict",
    max_batch: Annotated[int, typer.Option(min=1, help="Most streams in one micro-batch.")] = 1024,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, max=10000.0, help="Longest a request waits for others to join its batch.")
    ] = 2.0,
    ttl: Annotated[
        float | None, typer.Option(min=0.001, help="Forget streams idle this many seconds (default: never).")
    ] = None,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB (413 beyond).")] = 16.0,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads for the model.")] = 1,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes sharing the port and the store (each with its own batcher); "
            "more use more cores. /metrics sums every worker's counters.",
        ),
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    engine: Annotated[
        Literal["torch", "onnx"],
        typer.Option(help="What runs the model: torch, or onnxruntime (faster for a few streams per step)."),
    ] = "torch",
) -> None:
    """Serve a trained run over HTTP: each stream's hidden state kept durably, advanced one step at a time.

    Examples:

      hiddenstate serve runs/demo --port 8000

      hiddenstate serve runs/demo --store redis://127.0.0.1:6379/0

    Then: curl -X POST localhost:8000/v1/streams/sensor-1/observe -H 'content-type: application/json'
    -d '{"seq": 1, "values": [[0.5, 1.2]]}'. OpenAPI docs at /docs.
    """
    import torch

    uvicorn = require("uvicorn", "serve")
    from hiddenstate.serve.app import create_app
    from hiddenstate.serve.metrics import MULTIPROC_ENV

    torch.set_num_threads(threads)
    options: dict[str, Any] = {"sync": sync, "ttl": ttl, "max_batch": max_batch, "max_wait_ms": max_wait_ms}
    options.update(max_body_mb=max_body_mb, durability=durability)
    options["engine"] = engine
    service = build_service(run_dir, store, **options)  # type: ignore[arg-type]
    report = service.durability_report()
    if not report["durable"]:
        settings = " ".join(f"{k}={v}" for k, v in report.items() if k not in ("mode", "durable"))
        typer.echo(
            f"Warning: the store runs with {settings} (--durability {durability}): an acknowledged update may be "
            "lost in a crash of the machine",
            err=True,
        )
    typer.echo(
        f"hiddenstate serve: {run_dir} on http://{host}:{port} (store {service.store.url}, docs at /docs"
        + (f", {workers} worker processes)" if workers > 1 else ")"),
        err=True,
    )
    if workers > 1:
        # Checked above, once, with a clear message; each worker process opens its own service.
        url = store if store is not None else service.store.url  # (store.url masks a Redis password)
        service.store.close()
        worker = {"run_dir": str(Path(run_dir).resolve()), "store": url, "threads": threads, **options}
        os.environ[_WORKER_ENV] = json.dumps(worker)
        # The workers' metrics go to prometheus_client's multiprocess files, in a fresh folder
        # unless one is given; /metrics sums them (SharedMetrics).
        own_folder = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="hiddenstate-metrics-")
        if own_folder is not None:
            os.environ[MULTIPROC_ENV] = own_folder
        try:
            uvicorn.run(
                f"{__name__}:worker_app", factory=True, host=host, port=port, workers=workers, log_level=log_level,
                access_log=False,
            )  # fmt: skip
        finally:
            if own_folder is not None:
                shutil.rmtree(own_folder, ignore_errors=True)
        return
    app = create_app(service)
    _tune_process()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


_WORKER_ENV = "HIDDENSTATE_SERVE_WORKER"


def worker_app() -> Any:
    """The app of one worker process of ``hiddenstate serve --workers N`` (uvicorn calls it in each
    process it starts; the options come from the parent through an environment variable). The
    workers share the store; compare-and-set on each record's version keeps them consistent, as
    it does replicas."""
    import torch

    from hiddenstate.serve.app import create_app
    from hiddenstate.serve.metrics import MULTIPROC_ENV, SharedMetrics

    options = json.loads(os.environ[_WORKER_ENV])
    torch.set_num_threads(options.pop("threads"))
    metrics = SharedMetrics() if os.environ.get(MULTIPROC_ENV) else None
    service = build_service(options.pop("run_dir"), options.pop("store"), metrics=metrics, **options)
    app = create_app(service)
    _tune_process()
    return app


def _tune_process() -> None:
    # Everything loaded so far (torch, the model, FastAPI: ~250k objects) lives as long as the process.
    # Without this, each full garbage collection walks all of it, and a micro-batch of 1,000 streams
    # allocates enough to trigger several: freezing them cut such a batch's Python time by 4x.
    gc.collect()
    gc.freeze()
    # The worker thread's SQLite calls give up the GIL on every row; while the event loop thread
    # runs Python, each row then waits up to the switch interval (5 ms by default) to get it back.
    sys.setswitchinterval(float(os.environ.get("HIDDENSTATE_SWITCH_INTERVAL", "0.001")))


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve)


def main(argv: list[str] | None = None) -> None:
    """``python -m hiddenstate.serve RUN_DIR ...``: the serve command on its own."""
    from hiddenstate.errors import HiddenStateError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    try:
        app(args=argv, prog_name="hiddenstate serve", standalone_mode=True)
    except HiddenStateError as e:
        typer.echo(f"Error: {' '.join(str(e).split())}", err=True)
        sys.exit(e.exit_code)

"""Real parts for tests and benchmarks: a demo run, a throwaway redis-server, a server process.

Nothing here is mocked: :class:`RedisServer` starts the ``redis-server`` binary on a free
loopback port (append-only file, ``appendfsync always``), and :class:`ServerProcess` starts
``python -m hiddenstate.serve`` as a child process that can be SIGKILLed mid-load.

    >>> port = free_port()
    >>> 1024 <= port <= 65535
    True
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from hiddenstate.model import SequenceModel, register_model_kind
from hiddenstate.state import LayerState, State

__all__ = ["NanWhenHigh", "RedisServer", "ServerProcess", "ThreadServer", "demo_run", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@register_model_kind("test_nan_when_high")
class NanWhenHigh(SequenceModel):
    """A SequenceModel whose state turns NaN in rows where a normalised input is above 5: for
    the tests of the service's nonfinite refusal (a finite input that the model ruins)."""

    def forward(self, x: torch.Tensor, state: State | None = None, **kw: Any) -> tuple[torch.Tensor, State]:
        y, new = super().forward(x, state, **kw)
        high = (x > 5).flatten(1).any(1, keepdim=True)  # (batch, 1)
        layers = [LayerState(torch.where(high, float("nan"), ls.h), ls.c) for ls in new.layers]
        return y, State._trusted(new.spec, layers)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kind": "test_nan_when_high"}


def demo_run(
    path: str | Path,
    *,
    layers: Sequence[tuple[str, int]] = (("lstm", 8), ("lstm", 16)),
    inputs: Sequence[str] = ("load", "temp"),
    targets: Sequence[str] | None = None,
    state_encoder: str | None = None,
    horizon: int = 0,
    seed: int = 0,
) -> Path:
    """An untrained but deterministic run directory written by the real ``save_run``.

    The scaler is fitted on random data with means near 50 and stds near 10, so the service's
    scaling is exercised. Returns ``path``.
    """
    from hiddenstate.data.scaling import StandardScaler
    from hiddenstate.model import SequenceModel
    from hiddenstate.runs.run import save_run
    from hiddenstate.state import LayerSpec

    targets = tuple(inputs) if targets is None else tuple(targets)
    gen = torch.Generator().manual_seed(seed)
    model = SequenceModel(
        len(inputs), len(targets), [LayerSpec(c, h) for c, h in layers], state_encoder=state_encoder, horizon=horizon
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    rng = np.random.default_rng(seed)
    data = 50 + 10 * rng.standard_normal((500, len(inputs))) * rng.uniform(0.5, 1.5, len(inputs))
    scaler = StandardScaler.fit(data, columns=list(inputs))
    save_run(path, model, scaler=scaler, inputs=inputs, targets=targets)
    return Path(path)


class RedisServer:
    """``redis-server`` on a free loopback port, durable (AOF, ``appendfsync always``), in a temp dir.

    Use as a context manager; ``url(db)`` gives ``redis://127.0.0.1:PORT/db``. ``kill()``
    SIGKILLs it and ``start()`` brings it back on the same port and data. ``appendonly`` and
    ``appendfsync`` set a weaker durability, to test what the service does with one.
    """

    def __init__(self, binary: str | None = None, *, appendonly: str = "yes", appendfsync: str = "always") -> None:
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.appendonly, self.appendfsync = appendonly, appendfsync
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hiddenstate-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, prefix: str | None = None) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}" + (f"?prefix={prefix}" if prefix else "")

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", self.appendonly,
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--databases", "64",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_text = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log_text}")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServerProcess:
    """``python -m hiddenstate.serve RUN_DIR --port P ...`` as a child process, ready when /healthz answers.

    ``args`` are extra command-line flags (``["--store", url]``). ``kill()`` sends SIGKILL;
    ``start()`` starts it again on the same port. stderr goes to ``log`` (a file in the run's
    parent folder) for a failing test to show. ``wrapper`` is a command line put before the
    server's own (``["strace", "-f", "-o", path]``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        threads: int = 1,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.args = list(args)
        self.wrapper = list(wrapper)
        self.port = port or free_port()
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.run_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the process and wait until /healthz answers."""
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> ServerProcess:
        """Start the process without waiting (start several, then :meth:`wait_ready` each)."""
        cmd = [
            *self.wrapper, sys.executable, "-m", "hiddenstate.serve", str(self.run_dir),
            "--port", str(self.port), "--threads", str(self.threads), *self.args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            # its own process group, so that kill() also reaches the worker processes of --workers N
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        if self.proc is None:
            raise RuntimeError("spawn() the server first")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start: {self.read_log()[-2000:]}")
            time.sleep(0.1)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ThreadServer:
    """A real uvicorn server for ``app`` in a background thread of this process, on a free port.

    The in-process counterpart of :class:`ServerProcess`: the test can reach the app's service
    and store directly while it talks HTTP to it.
    """

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn thread did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)

"""Stopping the service never closes the store under a store call that is still running.

SQLite closed from one thread while another runs a statement on that connection crashes the
process (a segfault, not an exception); the background WAL checkpoint once did exactly that when
a test server stopped. The store calls made off the worker thread run in the service's own
executor, and ``stop`` waits for them before it closes the store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from hiddenstate.runs.run import load_run
from hiddenstate.serve import ServedModel, Service
from hiddenstate.serve.stores.sqlite import SQLiteStore
from hiddenstate.serve.testing import demo_run


class SlowStore(SQLiteStore):
    """A real SQLite store whose ``maintain`` and ``ping`` take 0.3 s, logging when each starts,
    ends and when the store is closed, with the thread each ran in."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.events: list[tuple[str, str]] = []

    def _slow(self, name: str, call) -> None:
        self.events.append((f"{name} begins", threading.current_thread().name))
        time.sleep(0.3)
        call()  # on a closed store this raises, and "ends" is never logged
        self.events.append((f"{name} ends", threading.current_thread().name))

    def maintain(self) -> None:
        self._slow("maintain", super().maintain)

    def ping(self) -> None:
        self._slow("ping", super().ping)

    def close(self) -> None:
        self.events.append(("close", threading.current_thread().name))
        super().close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    return ServedModel.from_run(load_run(demo_run(tmp_path_factory.mktemp("serve-shutdown") / "run")))


@pytest.mark.parametrize("call", ["maintain", "ping"])
def test_stop_waits_for_the_store_call_in_flight_then_closes(served: ServedModel, tmp_path: Path, call: str) -> None:
    store = SlowStore(tmp_path / "states.db")

    async def main() -> None:
        svc = Service(served, store, max_wait=0.0)
        await svc.start()
        pinged = asyncio.get_running_loop().create_task(svc.ping()) if call == "ping" else None
        while not any(e == f"{call} begins" for e, _ in store.events):
            await asyncio.sleep(0.01)
        await svc.stop()  # while the call sleeps in its thread
        if pinged is not None:
            await pinged

    asyncio.run(main())
    names = [e for e, _ in store.events]
    begins = names.index(f"{call} begins")
    assert names[begins : begins + 1] + names[-2:] == [f"{call} begins", f"{call} ends", "close"]
    assert all(e != f"{call} begins" or t.startswith("hiddenstate-store") for e, t in store.events)

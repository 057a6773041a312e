"""The streaming service: each stream's hidden state kept durably over HTTP.

``hiddenstate serve RUN_DIR`` runs it; :func:`create_app` builds the FastAPI app around a
:class:`Service`, which holds a :class:`ServedModel` (the run's model and scaler) and a
:class:`StateStore` (opened by :func:`open_store`: SQLite by default, Redis for replicas).
See docs/serving.md.

Every name loads on first use, so ``hiddenstate.serve.client`` needs httpx alone, and a
missing extra fails in one line: ``pip install 'hiddenstate[serve]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Limits",
    "Metrics",
    "MicroBatcher",
    "Record",
    "RedisStore",
    "SQLiteStore",
    "ServedModel",
    "Service",
    "StateStore",
    "Write",
    "build_service",
    "create_app",
    "open_store",
    "register",
]

_LAZY = {
    "Limits": "hiddenstate.serve.service",
    "Metrics": "hiddenstate.serve.metrics",
    "MicroBatcher": "hiddenstate.serve.batcher",
    "Record": "hiddenstate.serve.stores",
    "RedisStore": "hiddenstate.serve.stores.redis",
    "SQLiteStore": "hiddenstate.serve.stores.sqlite",
    "ServedModel": "hiddenstate.serve.served",
    "Service": "hiddenstate.serve.service",
    "StateStore": "hiddenstate.serve.stores",
    "Write": "hiddenstate.serve.stores",
    "build_service": "hiddenstate.serve.command",
    "create_app": "hiddenstate.serve.app",
    "open_store": "hiddenstate.serve.stores",
    "register": "hiddenstate.serve.command",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

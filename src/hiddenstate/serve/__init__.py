"""The streaming service: each stream's hidden state kept durably over HTTP.

``hiddenstate serve RUN_DIR`` runs it; :func:`create_app` builds the FastAPI app around a
:class:`Service`, which holds a :class:`ServedModel` (the run's model and scaler) and a
:class:`StateStore` (:class:`SQLiteStore` by default, :class:`RedisStore` for replicas).
See docs/serving.md.
"""

from __future__ import annotations

from .app import create_app
from .batcher import MicroBatcher
from .command import build_service, register
from .metrics import Metrics
from .redis_store import RedisStore
from .served import ServedModel
from .service import Limits, Service
from .store import Record, SQLiteStore, StateStore, Write, open_store

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

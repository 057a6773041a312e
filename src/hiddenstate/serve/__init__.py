"""The streaming service: each stream's hidden state kept durably over HTTP.

``hiddenstate serve RUN_DIR`` runs it; :func:`create_app` builds the FastAPI app around a
:class:`Service`, which holds a :class:`ServedModel` (the run's model and scaler) and a
:class:`StateStore` (:class:`SQLiteStore` by default, :class:`RedisStore` for replicas).
See docs/serving.md.
"""

from __future__ import annotations

from hiddenstate.serve.app import create_app
from hiddenstate.serve.batcher import MicroBatcher
from hiddenstate.serve.command import build_service, register
from hiddenstate.serve.metrics import Metrics
from hiddenstate.serve.served import ServedModel
from hiddenstate.serve.service import Limits, Service
from hiddenstate.serve.stores import Record, StateStore, Write, open_store
from hiddenstate.serve.stores.redis import RedisStore
from hiddenstate.serve.stores.sqlite import SQLiteStore

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

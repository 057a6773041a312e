"""The ETT benchmark application: the protocol, the published tables and
``hiddenstate benchmark ett``. See docs/benchmarks.md."""

"""Side-by-side benchmarks of hiddenstate; `python -m benchmarks` runs them all. Not tests."""

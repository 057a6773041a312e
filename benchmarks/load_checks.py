"""What checking a run's listing costs: ``load_run`` next to its listing checks alone.

    python benchmarks/load_checks.py            # a small and a wide model, 20 repeats each
    python benchmarks/load_checks.py --repeats 5

The checks are every field of ``manifest.json`` (type and shape), the model built on the meta
device and its tensors compared with the weights (names, dtypes, shapes). ``load_run`` reads and
hashes the files, builds the model for real and loads the weights as well. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `hiddenstate` importable from src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

import hiddenstate as hs
from hiddenstate.runs.files import parse_tensors
from hiddenstate.runs.listing import check_run_listing, check_run_model, check_tensors, meta_model

MODELS = {"small: lstm 8, lstm 8": [8, 8], "wide: lstm 256, lstm 256": [256, 256]}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'model':<28} {'load_run ms':>12} {'checks ms':>10} {'checks / load_run':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes in MODELS.items():
            run = Path(tmp) / name.split(":")[0]
            model = hs.SequenceModel(2, 2, [hs.LSTM(h) for h in sizes])
            hs.save_run(run, model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
            listing = run / "manifest.json"
            manifest = json.loads(listing.read_text())
            weights, _ = parse_tensors(run / "model.safetensors", (run / "model.safetensors").read_bytes())

            def checks(manifest=manifest, listing=listing, weights=weights, run=run) -> None:
                check_run_listing(manifest, listing)
                shape = meta_model(manifest["model"], listing)
                check_run_model(manifest, shape, listing)
                check_tensors(run / "model.safetensors", weights, shape)

            load = _median_ms(lambda run=run: hs.load_run(run), args.repeats)
            checked = _median_ms(checks, args.repeats)
            print(f"{name:<28} {load:>12.2f} {checked:>10.2f} {checked / load:>17.2f}x")


if __name__ == "__main__":
    main()

"""Stream one series through a hiddenstate model served by Triton, the server keeping its state.

First write the model repository and start Triton on it::

    hiddenstate export runs/demo --out model_repository --triton --name demo
    docker run --rm -p 8001:8001 -v $PWD/model_repository:/models \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models

Then::

    python examples/triton_client.py --model demo --url localhost:8001 --csv data.csv

Each request carries one chunk of steps of one sequence. ``sequence_start=True`` on the first
request raises the START control, which the graph reads as ``reset``: that sequence starts from
the model's initial state. Triton keeps ``state_out.*`` for the sequence and feeds it back as
``state_in.*`` on the next request with the same ``sequence_id``; ``sequence_end=True`` frees it.
The state never travels over the wire. (A model with a state encoder also takes ``cond`` on each
request; it is read on the first.)
"""

from __future__ import annotations

import argparse

import numpy as np


def stream(client, model: str, series: np.ndarray, sequence_id: int, chunk: int) -> np.ndarray:
    """``series`` ``(steps, input_size)`` in original units; returns the predictions ``(steps, output_size)``."""
    from tritonclient.grpc import InferInput, InferRequestedOutput

    outputs = []
    starts = range(0, len(series), chunk)
    for k, start in enumerate(starts):
        x = series[start : start + chunk][None].astype(np.float32)  # (1, steps, input_size)
        request = InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        result = client.infer(
            model,
            [request],
            outputs=[InferRequestedOutput("y")],
            sequence_id=sequence_id,
            sequence_start=k == 0,
            sequence_end=k == len(starts) - 1,
        )
        outputs.append(result.as_numpy("y")[0])
    return np.concatenate(outputs, axis=0)


def main() -> None:
    import tritonclient.grpc as grpcclient

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hiddenstate")
    p.add_argument("--url", default="localhost:8001")
    p.add_argument("--csv", help="numeric CSV, one row per step, the run's input columns (default: a sine)")
    p.add_argument("--chunk", type=int, default=24, help="steps per request")
    args = p.parse_args()
    if args.csv:
        series = np.loadtxt(args.csv, delimiter=",", skiprows=1, ndmin=2)
    else:
        t = np.arange(200.0)
        series = np.stack([np.sin(t / 10), np.cos(t / 10)], axis=1)
    client = grpcclient.InferenceServerClient(url=args.url)
    y = stream(client, args.model, series, sequence_id=1, chunk=args.chunk)
    print(f"{len(y)} predictions; last: {y[-1]}")


if __name__ == "__main__":
    main()

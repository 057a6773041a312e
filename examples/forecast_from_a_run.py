"""Use a trained run from Python: forecast in original units, then do it by hand with the state.

hiddenstate train --out runs/demo
python examples/forecast_from_a_run.py runs/demo
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import hiddenstate as hs
from hiddenstate.cli.pipeline import load_data, run_settings
from hiddenstate.forecast import rollout, warm

run = hs.load_run(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
data = load_data(run_settings(run))  # the data the run was trained on
history = data.arrays(list(run.inputs))[0]  # (steps, n_inputs), original units

# 1. One call: warm the state through the whole history, forecast a day, original units.
#    method "auto" uses the direct head when it covers the horizon; "rollout" feeds outputs back.
day = run.forecast(history, horizon=96, method="rollout")  # (1, 96, n_targets)
print(f"next value of {run.targets[0]}: {day[0, 0, 0]:.3f}; a day ahead: {day[0, -1, 0]:.3f}")

# 2. By hand: the state is an ordinary value you can read, keep and reuse.
x = torch.as_tensor(run.scaler.transform(history)[None], dtype=torch.float32)  # (1, steps, n_inputs)
state = warm(run.model, x[:, :-1])  # has seen every row but the last
top = state.layers[-1]
print(f"top layer h: mean {float(top.h.mean()):+.3f}, max |h| {float(top.h.abs().max()):.3f}")
index = [run.inputs.index(t) for t in run.targets]  # where the targets are fed back
same = rollout(run.model, state, x[:, -1], 96, target_index=index)  # (1, 96, n_targets), normalised
back = run.target_scaler.inverse_transform(same.double().numpy())
print(f"by hand equals run.forecast: {np.allclose(back, day, atol=1e-5)}")

"""The built-in dataset: two variables at 15-minute steps with daily and weekly seasonality.

It is generated in code, so ``hiddenstate train`` works on a fresh machine with no files. It is
built so that a small recurrent model can clearly beat repeating the last value: the daily
(96 steps) and weekly (672 steps) cycles are predictable from the recent past, the noise is not.

- ``load``: a daily cycle whose amplitude swells and shrinks over the week, a second daily
  harmonic, a weekly swing, and white noise.
- ``temperature``: a daily cycle three hours behind the load's, a weekly swing, a pull towards
  the load of two hours ago, and mildly persistent AR(1) noise.
"""

from __future__ import annotations

import numpy as np

from hiddenstate.data.frames import Dataset, Series
from hiddenstate.errors import ConfigError

__all__ = ["STEPS_PER_DAY", "STEPS_PER_WEEK", "synthetic_dataset"]

STEPS_PER_DAY = 96  # 15-minute steps
STEPS_PER_WEEK = 7 * STEPS_PER_DAY


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """AR(1) noise with stationary standard deviation ``sigma``."""
    shocks = rng.normal(0.0, sigma * np.sqrt(1 - phi**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sigma)
    for t in range(1, n):  # once per dataset, a few thousand steps
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def synthetic_dataset(n_steps: int = 8 * STEPS_PER_WEEK, seed: int = 0) -> Dataset:
    """One series of ``n_steps`` 15-minute rows from 2024-01-01 00:00 (a Monday), deterministic by seed.

    Columns ``("load", "temperature")``; the default is 8 weeks (5,376 rows).

    >>> ds = synthetic_dataset(n_steps=4 * 96, seed=1)
    >>> ds.columns, ds.array().shape, str(ds.series[0].time[1])
    (('load', 'temperature'), (384, 2), '2024-01-01T00:15:00.000000000')
    >>> bool((synthetic_dataset(500, seed=3).array() == synthetic_dataset(500, seed=3).array()).all())
    True
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 3:
        raise ConfigError(f"synthetic_dataset: n_steps must be an int >= 3, got {n_steps!r}")
    n = int(n_steps)
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    day = 2 * np.pi * t / STEPS_PER_DAY  # phase 0 at midnight
    week = 2 * np.pi * t / STEPS_PER_WEEK  # phase 0 at Monday midnight

    swell = 1 + 0.35 * np.cos(week)  # a stronger daily swing early in the week
    load = 10 + 3 * swell * np.sin(day - np.pi / 2) + 0.8 * np.sin(2 * day) + 1.5 * np.cos(week)
    load += rng.normal(0.0, 0.5, n)

    lag = 8  # two hours
    load_lagged = np.concatenate([np.full(lag, load[0]), load[:-lag]])
    temperature = 20 + 4 * np.sin(day - np.pi / 2 - 2 * np.pi / 8) + 2 * np.sin(week) + 0.3 * (load_lagged - 10)
    temperature += _ar1(rng, n, phi=0.3, sigma=0.4)

    time = np.datetime64("2024-01-01T00:00:00", "ns") + t * np.timedelta64(15, "m")
    columns = ("load", "temperature")
    series = Series("synthetic", np.stack([load, temperature], axis=1), columns, time)
    return Dataset((series,), columns, f"synthetic(n_steps={n}, seed={seed})")

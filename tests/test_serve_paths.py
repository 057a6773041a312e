"""The service's forecast endpoint gives quantiles and sample paths of a likelihood model, as the library does."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

import hiddenstate as hs
from hiddenstate.data.scaling import StandardScaler

pytest.importorskip("fastapi", reason="the service is the serve extra")

from hiddenstate.serve import Limits, ServedModel, Service, create_app, open_store
from hiddenstate.serve.testing import ThreadServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    import torch

    folder = tmp_path_factory.mktemp("serve-paths")
    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(8)], likelihood="studentt")
    rng = np.random.default_rng(0)
    scaler = StandardScaler.fit(rng.normal([50, 20], [10, 5], size=(500, 2)), columns=["load", "temp"])
    hs.save_run(folder / "run", model, scaler=scaler, inputs=["load", "temp"], targets=["load", "temp"])
    run = hs.load_run(folder / "run")
    service = Service(
        ServedModel.from_run(run),
        open_store(f"sqlite://{folder / 's.db'}"),
        limits=Limits(max_horizon=24),
        max_wait=0.001,
    )
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http, run


def test_quantiles_and_samples_match_the_library(served) -> None:
    http, run = served
    sid = f"s-{uuid.uuid4().hex[:6]}"
    values = np.random.default_rng(1).normal([50, 20], [10, 5], size=(30, 2))
    r = http.post(f"/v1/streams/{sid}/observe", json={"seq": 1, "values": values.tolist()})
    assert r.status_code == 200, r.text
    # the observe answer of a likelihood model is its mean, in original units
    assert len(r.json()["prediction"]) == 2
    body = {"horizon": 6, "quantiles": [0.1, 0.5, 0.9], "samples": 200, "seed": 4}
    a = http.post(f"/v1/streams/{sid}/forecast", json=body)
    assert a.status_code == 200, a.text
    got = a.json()
    assert got["method"] == "paths" and sorted(got["quantiles"]) == ["0.1", "0.5", "0.9"]
    samples = np.asarray(got["samples"])
    assert samples.shape == (200, 6, 2)
    np.testing.assert_allclose(got["quantiles"]["0.5"], np.quantile(samples, 0.5, axis=0), rtol=1e-9)
    np.testing.assert_allclose(got["forecast"], samples.mean(axis=0), rtol=1e-9)
    # the library, from the whole history: the same seeded paths (float32 state, so to rounding)
    want = run.forecast(values, 6, quantiles=[0.1, 0.5, 0.9], num_samples=200, seed=4)[:, 0]  # (3, 6, 2)
    np.testing.assert_allclose(
        np.stack([got["quantiles"][k] for k in ("0.1", "0.5", "0.9")]), want, rtol=1e-3, atol=1e-3
    )
    again = http.post(f"/v1/streams/{sid}/forecast", json=body).json()
    assert again["samples"] == got["samples"]  # a seed: the same paths, and the state did not change


def test_bad_quantiles_and_point_models_are_refused(served) -> None:
    http, _ = served
    sid = f"s-{uuid.uuid4().hex[:6]}"
    http.post(f"/v1/streams/{sid}/observe", json={"seq": 1, "values": [[50.0, 20.0]]})
    r = http.post(f"/v1/streams/{sid}/forecast", json={"horizon": 3, "quantiles": [1.5]})
    assert r.status_code in (400, 422) and "quantiles must be numbers in (0, 1)" in r.text
    r = http.post(f"/v1/streams/{sid}/forecast", json={"horizon": 3, "samples": 0})
    assert r.status_code == 422

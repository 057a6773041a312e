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
    assert (r.status_code, r.json()) == (
        422,
        {"detail": "body.quantiles[0]: Input should be less than 1", "error": "invalid"},
    )
    r = http.post(f"/v1/streams/{sid}/forecast", json={"horizon": 3, "samples": 0})
    assert r.status_code == 422


def _forecast(http, body: dict, sid: str | None = None):
    if sid is None:
        sid = f"s-{uuid.uuid4().hex[:6]}"
        http.post(f"/v1/streams/{sid}/observe", json={"seq": 1, "values": [[50.0, 20.0]]})
    return http.post(f"/v1/streams/{sid}/forecast", json=body)


def test_what_the_schema_allows_is_taken_and_what_it_refuses_is_refused(served) -> None:
    http, _ = served
    # integers written as floats count as integers (JSON Schema's rule), for samples and seed too
    a, b = (
        _forecast(http, {"horizon": 3, "samples": 2.0, "seed": 1.0}),
        _forecast(http, {"horizon": 3, "samples": 2, "seed": 1}),
    )
    assert a.status_code == 200 and a.json()["samples"] == b.json()["samples"]
    r = _forecast(http, {"horizon": 2, "samples": 2, "seed": 2**64})
    assert (r.status_code, r.json()["detail"]) == (
        422,
        "body.seed: Input should be less than or equal to 18446744073709551615",
    )
    assert _forecast(http, {"horizon": 2, "samples": 2, "seed": 2**64 - 1}).status_code == 200
    schema = http.get("/openapi.json").json()["components"]["schemas"]["ForecastBody"]["properties"]
    items = schema["quantiles"]["anyOf"][0]["items"]
    assert (items["exclusiveMinimum"], items["exclusiveMaximum"]) == (0, 1)
    assert schema["seed"]["anyOf"][0]["maximum"] == 2**64 - 1


def test_quantiles_keep_their_own_keys_and_are_checked_before_any_path(served) -> None:
    http, _ = served
    r = _forecast(http, {"horizon": 2, "quantiles": [0.1, 0.1000001], "seed": 0})
    assert r.status_code == 200 and sorted(r.json()["quantiles"]) == ["0.1", "0.1000001"]
    r = _forecast(http, {"horizon": 2, "quantiles": [0.5, 0.5]})
    assert (r.status_code, r.json()["detail"]) == (422, "quantiles: each must differ from the others, got [0.5, 0.5]")
    # a bad request for a stream that does not exist is refused as bad, before the store is read
    r = _forecast(http, {"horizon": 2, "quantiles": [0.5, 0.5]}, sid="never-observed")
    assert r.status_code == 422


def test_a_forecast_may_not_ask_for_more_than_max_forecast_values(tmp_path) -> None:
    import torch

    torch.manual_seed(0)
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)], likelihood="normal")
    hs.save_run(tmp_path / "run", model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
    service = Service(
        ServedModel.from_run(hs.load_run(tmp_path / "run")),
        open_store(f"sqlite://{tmp_path / 's.db'}"),
        limits=Limits(max_horizon=50, max_forecast_values=400),
        max_wait=0.001,
    )
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        ok = _forecast(http, {"horizon": 2, "samples": 100})  # 100 x 2 x 2 = 400
        assert ok.status_code == 200
        r = _forecast(http, {"horizon": 3, "samples": 100})
        assert (r.status_code, r.json()) == (
            422,
            {"detail": "600 sample path values (paths x horizon x 2 targets); at most 400", "error": "invalid"},
        )
        r = _forecast(http, {"horizon": 3, "quantiles": [0.5]})  # 100 paths drawn for the quantiles
        assert r.status_code == 422 and r.json()["detail"].startswith("600 sample path values")
        many = [{"id": f"b{k}", "seq": 1, "values": [[1.0, 2.0]], "horizon": 50} for k in range(5)]
        r = http.post("/v1/observe", json={"streams": many})  # 5 x 50 x 2 = 500 numbers
        assert (r.status_code, r.json()["detail"]) == (
            422, "the horizons of one request ask for 500 forecast values (2 targets per step); at most 400"
        )  # fmt: skip
        assert http.get("/v1/streams/b0/state").status_code == 404  # nothing was applied
        assert http.post("/v1/observe", json={"streams": many[:4]}).status_code == 200


def test_a_point_model_takes_no_seed(tmp_path) -> None:
    model = hs.SequenceModel(2, 2, [hs.LSTM(4)])
    hs.save_run(tmp_path / "run", model, scaler=None, inputs=["a", "b"], targets=["a", "b"])
    service = Service(ServedModel.from_run(hs.load_run(tmp_path / "run")), open_store(f"sqlite://{tmp_path / 's.db'}"))
    with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        r = _forecast(http, {"horizon": 2, "seed": 1})
        assert (r.status_code, r.json()["detail"]) == (
            422,
            "seed: a model without a likelihood head draws no sample paths",
        )
        assert "seed" not in http.get("/openapi.json").json()["components"]["schemas"]["ForecastBody"]["properties"]

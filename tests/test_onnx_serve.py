"""``hiddenstate serve --engine onnx``: onnxruntime runs the model and the answers are torch's."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[dev]'")

from hiddenstate.serve.app import create_app
from hiddenstate.serve.command import build_service
from hiddenstate.serve.onnx_engine import OnnxEngineModel
from hiddenstate.serve.testing import ThreadServer, demo_run


@pytest.mark.parametrize(
    ("layers", "encoder"),
    [((("lstm", 8), ("gru", 6)), "learned"), ((("lstm", 4), ("lstm", 4)), "cond:2")],
    ids=["lstm-gru-learned", "cond"],
)
def test_the_onnx_engine_gives_the_torch_engines_answers(tmp_path: Path, layers: object, encoder: str) -> None:
    run_dir = demo_run(tmp_path / "run", layers=layers, state_encoder=encoder, horizon=0)  # type: ignore[arg-type]
    torch_service = build_service(run_dir, f"sqlite://{tmp_path / 'a.db'}")
    onnx_service = build_service(run_dir, f"sqlite://{tmp_path / 'b.db'}", engine="onnx")
    try:
        served_t, served_o = torch_service.served, onnx_service.served
        assert isinstance(served_o.model, OnnxEngineModel) and served_o.model.report.worst < 1e-5
        rng = np.random.default_rng(0)
        steps = [1, 3, 5, 3, 1, 2]
        xs = [rng.normal(size=(t, 2)).astype(np.float32) for t in steps]
        starts = torch.from_numpy(rng.uniform(-0.9, 0.9, (len(xs), served_t.state_width)).astype(np.float32))
        fresh = np.array([False, True, False, True, False, True])  # (a cond row needs a step after it)
        new_t, pred_t = served_t.advance(starts, fresh, xs)
        new_o, pred_o = served_o.advance(starts, fresh, xs)
        assert float((new_t - new_o).abs().max()) < 1e-5
        assert float((pred_t - pred_o).abs().max()) < 1e-5
        tails = torch.cat([torch.from_numpy(np.stack([x[-1] for x in xs])), pred_t], dim=1)
        f_t = served_t.forecast(new_t, tails, 6)
        f_o = served_o.forecast(new_o, tails, 6)
        assert float((f_t - f_o).abs().max()) < 1e-5
    finally:
        torch_service.store.close()
        onnx_service.store.close()


def test_a_served_stream_over_http_matches_on_both_engines(tmp_path: Path) -> None:
    run_dir = demo_run(tmp_path / "run", layers=(("lstm", 8), ("lstm", 16)))
    rng = np.random.default_rng(1)
    chunks = [(50 + 10 * rng.standard_normal((t, 2))).tolist() for t in (1, 4, 2, 1)]
    answers = {}
    for engine in ("torch", "onnx"):
        service = build_service(run_dir, f"sqlite://{tmp_path / f'{engine}.db'}", engine=engine)
        with ThreadServer(create_app(service)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            answers[engine] = []
            for seq, values in enumerate(chunks, start=1):
                r = client.post("/v1/streams/s1/observe", json={"seq": seq, "values": values})
                assert r.status_code == 200, r.text
                answers[engine].append(r.json()["prediction"])
        service.store.close()
    np.testing.assert_allclose(np.array(answers["onnx"]), np.array(answers["torch"]), atol=1e-4)  # original units


def test_an_unknown_engine_is_one_line(tmp_path: Path) -> None:
    from hiddenstate.errors import ServeError

    run_dir = demo_run(tmp_path / "run")
    with pytest.raises(ServeError, match=r"^engine 'tpu': expected 'torch' or 'onnx'$"):
        build_service(run_dir, f"sqlite://{tmp_path / 's.db'}", engine="tpu")

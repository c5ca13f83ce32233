"""The Ray Serve deployment (vitkit.serve.ray) on a local Ray instance started here: the same answers as
the single-process handler, concurrent requests batched by @serve.batch, refusals as there.
Ray Serve is a dev dependency (`make test` installs it); users get it with pip install 'vitkit[ray]'."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vitkit[ray]')")
httpx = pytest.importorskip("httpx")
import ray  # noqa: E402

from test_serve_support import free_port, photo_bytes, tiny_model, wait_until  # noqa: E402

from vitkit.serve.handler import BatchingHandler  # noqa: E402


def test_ray_serve_deployment_answers_like_the_service(tmp_path):
    from vitkit.serve.ray import build_app

    model_dir = tiny_model(tmp_path)
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(str(model_dir), handler_kwargs=dict(max_batch=8, device="cpu", dtype="fp32"), max_delay_ms=300),
                  route_prefix="/", name="vitkit")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/healthz", timeout=5).status_code == 200, timeout=120, step=0.5)
        photos = [photo_bytes("astronaut"), photo_bytes("chelsea"), photo_bytes("coffee", "PNG")] * 2
        with ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda d: httpx.post(url + "/v1/classify?topk=3", content=d, timeout=60,
                                                  headers={"content-type": "application/octet-stream"}), photos))
        assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
        assert max(r.json()["timing"]["batch_size"] for r in rs) > 1  # @serve.batch put requests together
        local = BatchingHandler.from_source(str(model_dir), device="cpu", dtype="fp32")
        for d, r in zip(photos, rs):
            want = local.classify([local.prepare(d)], topk=3)[0]
            got = r.json()["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in want]
            np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
        assert httpx.get(url + "/v1/model").json()["labels"] == local.labels
        bad = httpx.post(url + "/v1/classify", content=b"not an image", headers={"content-type": "image/jpeg"})
        assert bad.status_code == 400 and "text" in bad.json()["error"]
        assert httpx.post(url + "/v1/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    finally:
        serve.shutdown()
        ray.shutdown()

"""`vitkit serve`: the real server (uvicorn on a free 127.0.0.1 port, in a thread so faults can be injected)
answering real photographs; batching observed; every refusal status (docs/serving.md; RELIABILITY 23-31)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import vitkit  # noqa: E402
from vitkit.serve.app import ServeConfig, Service  # noqa: E402
from vitkit.serve.handler import BatchingHandler  # noqa: E402

from test_serve_support import LABELS, photo_bytes, thread_server, tiny_model, wait_until  # noqa: E402

JPEG = "image/jpeg"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def photos():
    return {"astronaut.jpg": photo_bytes("astronaut"), "chelsea.jpg": photo_bytes("chelsea"),
            "coffee.png": photo_bytes("coffee", "PNG")}


def _service(model_dir, handler_cls=BatchingHandler, handler_kw=None, **cfg):
    kw = dict(max_batch=8)
    kw.update(handler_kw or {})
    cfg.setdefault("max_delay_ms", 5)
    return Service(lambda: handler_cls.from_source(str(model_dir), **kw), ServeConfig(**cfg))


@pytest.fixture(scope="module")
def server(model_dir):
    """One shared service for the tests that do not need their own limits."""
    # fp32: its answers are compared with vitkit's own fp32 calls (auto would pick bf16 on a bf16 CPU)
    svc = _service(model_dir, max_body_mb=1, handler_kw=dict(max_pixels=2_000_000, dtype="fp32"))
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        yield url, svc


def _post(url, data, ctype=JPEG, **kw):
    return httpx.post(url, content=data, headers={"content-type": ctype}, timeout=30, **kw)


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = f"{name}{{{want}}}" if labels else name
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


# -- answers ---------------------------------------------------------------------------------------
def test_classify_real_photographs_as_predict_does(server, model_dir, photos, tmp_path):
    url, _ = server
    clf = vitkit.pipeline(str(model_dir), device="cpu", cpu_kernels=None)
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
        want = clf(str(tmp_path / name), topk=3)
        ctype = "image/png" if name.endswith(".png") else JPEG
        for r in (_post(url + "/v1/classify?topk=3", data, ctype),
                  httpx.post(url + "/v1/classify?topk=3", files={"file": (name, data, ctype)})):
            assert r.status_code == 200, r.text
            got = r.json()
            assert [p["label"] for p in got["predictions"]] == [lab for lab, _ in want]
            np.testing.assert_allclose([p["score"] for p in got["predictions"]], [s for _, s in want], atol=1e-5)
            assert set(got["timing"]) >= {"decode_ms", "queue_ms", "total_ms", "batch_size"}
            assert got["input"] == {"size": [32, 32], "tokens": 17,
                                    "image_size": list(Image.open(io.BytesIO(data)).size[::-1])}


def test_explain_png_and_json_match_vitkit_explain(server, model_dir, photos):
    url, _ = server
    from vitkit.data.decode import open_image
    from vitkit.explain import explain

    model = vitkit.load(str(model_dir))
    img = open_image(photos["chelsea.jpg"])
    for method in ("last", "rollout"):
        r = _post(url + f"/v1/explain?method={method}", photos["chelsea.jpg"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(r.content))
        assert png.format == "PNG" and png.size == (32, 32) and png.mode == "RGB"
        r = _post(url + f"/v1/explain?method={method}&format=json", photos["chelsea.jpg"])
        j = r.json()
        want = explain(model, img, method=method)
        assert j["method"] == method and j["grid"] == [4, 4] and j["layer"] == 1
        np.testing.assert_allclose(np.array(j["heatmap"]), want.heatmap, atol=1e-5)
        assert [p["label"] for p in j["predictions"]] == [lab for lab, _ in want.predictions]
    r = _post(url + "/v1/explain?method=last&head=2&format=json", photos["chelsea.jpg"])
    assert r.json()["head"] == 2
    for bad in ("method=grad", "format=gif", "layer=7", "head=9", "method=rollout&head=1"):
        r = _post(url + "/v1/explain?" + bad, photos["chelsea.jpg"])
        assert r.status_code == 400, bad
        assert "error" in r.json()


def test_model_description_openapi_and_page(server):
    url, _ = server
    m = httpx.get(url + "/v1/model").json()
    assert m["labels"] == LABELS and m["architecture"]["depth"] == 2 and m["preprocessing"]["size"] == [32, 32]
    assert m["max_batch"] == 8 and m["tokens"] == {"32x32": 17}
    spec = httpx.get(url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and {"/v1/classify", "/v1/explain", "/v2/models/{name}/infer"} <= set(
        spec["paths"])
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    assert httpx.get(url + "/static/app.js").status_code == 200
    assert httpx.get(url + "/static/../app.py").status_code == 404
    assert httpx.get(url + "/nowhere").json()["status"] == 404
    assert httpx.get(url + "/v1/classify").status_code == 405


def test_kserve_v2_answers_like_v1(server, photos):
    url, _ = server
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").status_code == 200
    meta = httpx.get(url + "/v2/models/tiny-vit").json()
    assert meta["name"] == "tiny-vit" and meta["inputs"][0]["datatype"] == "BYTES"
    assert httpx.get(url + "/v2/models/tiny-vit/ready").json()["ready"] is True
    names = list(photos)
    req = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                   "data": [base64.b64encode(photos[n]).decode() for n in names]}],
           "parameters": {"topk": 4}}
    r = httpx.post(url + "/v2/models/tiny-vit/infer", json=req)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and out["label"]["shape"] == [3, 4] and out["score"]["datatype"] == "FP32"
    for i, n in enumerate(names):
        v1 = _post(url + "/v1/classify?topk=4", photos[n], "image/png" if n.endswith("png") else JPEG).json()
        assert out["label"]["data"][4 * i:4 * i + 4] == [p["label"] for p in v1["predictions"]]
        np.testing.assert_allclose(out["score"]["data"][4 * i:4 * i + 4], [p["score"] for p in v1["predictions"]],
                                   atol=1e-6)
    assert httpx.get(url + "/v2/models/other").status_code == 404
    assert httpx.post(url + "/v2/models/other/infer", json=req).status_code == 404
    bad = [{"inputs": []}, {"inputs": [{"datatype": "FP32", "data": [1.0]}]},
           {"inputs": [{"datatype": "BYTES", "data": ["%%% not base64"]}]},
           {"inputs": [{"datatype": "BYTES", "data": [base64.b64encode(b"hello").decode()]}]},
           {"inputs": req["inputs"], "parameters": {"topk": 0}}]
    for doc in bad:
        r = httpx.post(url + "/v2/models/tiny-vit/infer", json=doc)
        assert r.status_code == 400 and "error" in r.json(), doc
    r = httpx.post(url + "/v2/models/tiny-vit/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(url + "/v2/models/tiny-vit/infer", content=b"x", headers={"content-type": "image/png"})
    assert r.status_code == 415


# -- batching --------------------------------------------------------------------------------------
def test_concurrent_requests_share_one_forward(model_dir, photos):
    svc = _service(model_dir, max_delay_ms=400)
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        data = list(photos.values()) * 2  # 6 requests, three photographs
        with ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(lambda d: _post(url + "/v1/classify", d, "application/octet-stream"), data))
        assert [r.status_code for r in rs] == [200] * 6
        assert [r.json()["timing"]["batch_size"] for r in rs] == [6] * 6
        assert svc.batcher.batches_run == 1  # one forward answered all six
        # batched answers equal one-at-a-time answers
        for d, r in zip(data, rs):
            alone = svc.handler.classify([svc.handler.prepare(d)])[0]
            np.testing.assert_allclose([p["score"] for p in r.json()["predictions"]], [p["score"] for p in alone],
                                       atol=1e-5)
        m = httpx.get(url + "/metrics").text
        assert _metric(m, "vitkit_batch_size_count") == 1 and _metric(m, "vitkit_batch_size_sum") == 6


def test_batches_group_by_shape_under_a_token_budget(tmp_path, photos):
    """Two served sizes (4x4 and 8x8 patches: 17 and 65 tokens); a 136-token budget holds eight small images
    but only two large ones, and no forward mixes shapes."""
    d = tiny_model(tmp_path)
    svc = _service(d, max_delay_ms=500, handler_kw=dict(max_batch=8, max_batch_tokens=136, sizes=[(64, 64)]))
    seen = []
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        orig = svc.handler.forward

        def spy(x):
            seen.append(tuple(x.shape))
            return orig(x)

        svc.handler.forward = spy
        sizes = ["32", "64"] * 4
        with ThreadPoolExecutor(8) as ex:
            rs = list(ex.map(lambda s: _post(url + f"/v1/classify?size={s}", photos["chelsea.jpg"]), sizes))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        small = [r.json() for r, s in zip(rs, sizes) if s == "32"]
        large = [r.json() for r, s in zip(rs, sizes) if s == "64"]
        assert {r["input"]["tokens"] for r in small} == {17} and {r["input"]["tokens"] for r in large} == {65}
        assert [r["timing"]["batch_size"] for r in small] == [4] * 4
        assert [r["timing"]["batch_size"] for r in large] == [2] * 4
        assert sorted(seen) == [(2, 3, 64, 64), (2, 3, 64, 64), (4, 3, 32, 32)]
        assert _post(url + "/v1/classify?size=48", photos["chelsea.jpg"]).status_code == 400
        assert _post(url + "/v1/classify?size=abc", photos["chelsea.jpg"]).status_code == 400
        assert httpx.get(url + "/v1/model").json()["tokens"] == {"32x32": 17, "64x64": 65}


# -- readiness ------------------------------------------------------------------------------------------
def test_liveness_answers_while_loading_readiness_only_after_warmup(model_dir, photos):
    gate, warmed = threading.Event(), []

    class Slow(BatchingHandler):
        def warmup(self):
            gate.wait(30)
            super().warmup()
            warmed.append(True)

    svc = _service(model_dir, handler_cls=Slow)
    with thread_server(svc) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/v2/health/live").status_code == 200
        for path in ("/readyz", "/v2/health/ready"):
            assert httpx.get(url + path).status_code == 503
        r = _post(url + "/v1/classify", photos["chelsea.jpg"])
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in r.json()["error"]
        assert httpx.get(url + "/v1/model").status_code == 503
        m = httpx.get(url + "/metrics").text
        assert _metric(m, "vitkit_ready") == 0
        gate.set()
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, timeout=10)
        assert warmed == [True]
        assert httpx.get(url + "/v2/health/ready").status_code == 200
        assert _post(url + "/v1/classify", photos["chelsea.jpg"]).status_code == 200
        assert _metric(httpx.get(url + "/metrics").text, "vitkit_ready") == 1


def test_a_model_that_fails_to_load_says_why(tmp_path):
    svc = Service(lambda: BatchingHandler.from_source(str(tmp_path / "missing")), ServeConfig())
    with thread_server(svc) as url:
        wait_until(lambda: svc.state == "failed", timeout=10)
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and "does not exist" in r.json()["error"]


# -- refusals (RELIABILITY 23-26, 31) -------------------------------------------------------------------
def _raw(port: int, head: bytes, body_chunks=(), pause: float = 0.0, read_timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``head`` then ``body_chunks`` (pausing between them) over a raw socket; return what came back
    (until the server closed the connection) and how long after the headers it began."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    t0 = time.perf_counter()
    s.sendall(head)
    try:
        for c in body_chunks:
            if pause:
                time.sleep(pause)
            s.sendall(c)
    except (BrokenPipeError, ConnectionResetError):
        pass
    out = b""
    first = None
    try:
        while True:
            b = s.recv(65536)
            if first is None:
                first = time.perf_counter() - t0
            if not b:
                break
            out += b
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out, first if first is not None else -1.0


def test_413_body_over_the_limit_without_reading_it(server):
    url, svc = server
    port = int(url.rsplit(":", 1)[1])
    limit = svc.config.max_body_bytes
    # a declared 5 GB body: refused from the headers, nothing of it sent
    out, _ = _raw(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 5000000000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413") and b"5000000000 bytes" in out and b"connection: close" in out.lower()
    # chunked, no length: refused once the limit passes, while the client is still sending
    chunk = b"\xff" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    sent = []

    def frames():
        for i in range(400):  # 26 MB if all were sent
            sent.append(i)
            yield frame

    out, _ = _raw(port, head, frames(), pause=0.001)
    assert out.startswith(b"HTTP/1.1 413") and b"passed the limit" in out
    assert len(sent) < 400  # the server did not wait for (or hold) the rest
    # multipart over the limit
    r = httpx.post(url + "/v1/classify", files={"file": ("big.jpg", b"\xff" * (limit + 10), JPEG)})
    assert r.status_code == 413


def test_400_and_415_with_the_reason(server, photos):
    url, _ = server
    cases = {
        b"": (400, "empty"),
        b"just some text, not an image\n": (400, "text"),
        b"<!doctype html><html><body>hi</body></html>": (400, "HTML"),
        b'<svg xmlns="http://www.w3.org/2000/svg"></svg>': (400, "SVG"),
        photos["chelsea.jpg"][:2000]: (400, "the upload"),  # a truncated JPEG
    }
    for data, (status, word) in cases.items():
        r = _post(url + "/v1/classify", data)
        assert r.status_code == status and word in r.json()["error"], (data[:20], r.text)
    for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded", ""):
        r = httpx.post(url + "/v1/classify", content=photos["chelsea.jpg"], headers={"content-type": ctype})
        assert r.status_code == 415 and "content type" in r.json()["error"], ctype
    r = httpx.post(url + "/v1/classify", files={"other": ("a.jpg", photos["chelsea.jpg"], JPEG)})
    assert r.status_code == 400 and "'file'" in r.json()["error"]
    r = httpx.post(url + "/v1/classify", files=[("file", ("a.jpg", photos["chelsea.jpg"], JPEG))] * 2)
    assert r.status_code == 400 and "one image per request" in r.json()["error"]
    r = httpx.post(url + "/v1/classify", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 400
    for q in ("topk=0", "topk=6", "topk=two"):
        assert _post(url + "/v1/classify?" + q, photos["chelsea.jpg"]).status_code == 400, q


def _png_declaring(w: int, h: int) -> bytes:
    """A tiny PNG whose header declares w x h pixels (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_413_decoded_pixels_over_the_limit(server, photos):
    url, _ = server  # max_pixels 2,000,000
    r = _post(url + "/v1/classify", _png_declaring(30000, 30000), "image/png")
    assert r.status_code == 413 and "pixels" in r.json()["error"]
    big = photo_bytes("chelsea", size=1500)  # 2.25 MP, a real photograph
    assert _post(url + "/v1/classify", big).status_code == 413
    assert _post(url + "/v1/explain", big).status_code == 413


def test_paths_and_urls_are_never_opened_or_fetched(server, photos, tmp_path):
    url, _ = server
    real = tmp_path / "real.jpg"
    real.write_bytes(photos["chelsea.jpg"])  # a good image: if the path were opened, the answer would be 200
    hits = []

    class Sentinel(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(photos["chelsea.jpg"])

        def log_message(self, *a):
            pass

    trap = http.server.HTTPServer(("127.0.0.1", 0), Sentinel)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    trap_url = f"http://127.0.0.1:{trap.server_port}/cat.jpg"
    try:
        for s in (str(real), "file://" + str(real), trap_url):
            r = _post(url + "/v1/classify", s.encode())
            assert r.status_code == 400, s
            r = httpx.post(url + "/v1/classify", data={"file": s})  # a text field named file
            assert r.status_code in (400, 415), s
            r = httpx.post(url + "/v1/classify", files={"file": (None, s)})  # a text part in multipart
            assert r.status_code == 400 and "never opened" in r.json()["error"], s
            doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [s]}]}
            assert httpx.post(url + "/v2/models/tiny-vit/infer", json=doc).status_code == 400, s
            b64 = base64.b64encode(s.encode()).decode()  # the path, base64-encoded: decoded as bytes, not opened
            doc["inputs"][0]["data"] = [b64]
            assert httpx.post(url + "/v2/models/tiny-vit/infer", json=doc).status_code == 400, s
        assert hits == []
    finally:
        trap.shutdown()


def test_queue_full_is_a_fast_503_with_retry_after_and_later_requests_succeed(model_dir, photos):
    svc = _service(model_dir, max_queue=2, max_delay_ms=1500)
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        with ThreadPoolExecutor(2) as held:
            slow = [held.submit(_post, url + "/v1/classify", photos["chelsea.jpg"]) for _ in range(2)]
            wait_until(lambda: svc.admitted == 2, timeout=5)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(6) as ex:
                rs = list(ex.map(lambda _: _post(url + "/v1/classify", photos["chelsea.jpg"]), range(6)))
            took = time.perf_counter() - t0
            assert [r.status_code for r in rs] == [503] * 6
            assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["error"] for r in rs)
            assert took < 1.0  # refused at once, not after the 1.5 s the admitted ones wait
            assert [f.result().status_code for f in slow] == [200, 200]
        assert _post(url + "/v1/classify", photos["chelsea.jpg"]).status_code == 200
        m = httpx.get(url + "/metrics").text
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/classify", status="503") == 6
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/classify", status="200") == 3


def test_request_over_timeout_is_504_and_not_run(model_dir, photos):
    svc = _service(model_dir, timeout_s=0.3, max_delay_ms=1000)
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        t0 = time.perf_counter()
        r = _post(url + "/v1/classify", photos["chelsea.jpg"])
        assert r.status_code == 504 and "timeout" in r.json()["error"] and time.perf_counter() - t0 < 0.9
        time.sleep(1.2)
        assert svc.batcher.batches_run == 0  # the timed-out request was dropped, not computed for nobody


def test_out_of_memory_on_a_batch_fails_that_batch_and_the_next_request_succeeds(model_dir, photos):
    """A CPU cannot be driven out of memory safely in a test: the handler raises torch's own OutOfMemoryError for
    batches of more than two images, as a GPU would (the device check in docs/serving.md does it for real)."""

    class SmallDevice(BatchingHandler):
        warm = False

        def warmup(self):
            super().warmup()
            self.warm = True

        def forward(self, pixels):
            if self.warm and len(pixels) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return super().forward(pixels)

    svc = _service(model_dir, handler_cls=SmallDevice, max_delay_ms=400, handler_kw=dict(max_batch=8))
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, timeout=10)
        with ThreadPoolExecutor(4) as ex:
            rs = list(ex.map(lambda _: _post(url + "/v1/classify", photos["coffee.png"], "image/png"), range(4)))
        assert [r.status_code for r in rs] == [503] * 4
        assert all("out of memory" in r.json()["error"] and "Traceback" not in r.text for r in rs)
        r = _post(url + "/v1/classify", photos["coffee.png"], "image/png")
        assert r.status_code == 200 and r.json()["timing"]["batch_size"] == 1
        m = httpx.get(url + "/metrics").text
        assert _metric(m, "vitkit_batch_errors_total", kind="out_of_memory") == 1


def test_warmup_raising_oom_leaves_the_service_not_ready(model_dir):
    class Fails(BatchingHandler):
        def warmup(self):
            raise torch.OutOfMemoryError("CUDA out of memory")

    svc = Service(lambda: Fails.from_source(str(model_dir)), ServeConfig())
    with thread_server(svc) as url:
        wait_until(lambda: svc.state == "failed", timeout=10)
        assert httpx.get(url + "/readyz").status_code == 503


def test_unexpected_errors_give_json_500_without_traceback(model_dir, photos):
    class Broken(BatchingHandler):
        def prepare(self, data, size=None):
            raise KeyError("internal detail")

    svc = Service(lambda: Broken.from_source(str(model_dir)), ServeConfig())
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        r = _post(url + "/v1/classify", photos["chelsea.jpg"])
        assert r.status_code == 500 and r.json()["error"].startswith("internal error")
        assert "Traceback" not in r.text and "internal detail" not in r.text
        assert _post(url + "/v1/explain", photos["chelsea.jpg"]).status_code == 200  # the service goes on


# -- slow clients (RELIABILITY 27) -----------------------------------------------------------------
def test_a_client_dribbling_bytes_is_dropped_after_the_read_timeout(model_dir, photos):
    svc = _service(model_dir, read_timeout_s=0.6)
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        port = int(url.rsplit(":", 1)[1])
        data = photos["chelsea.jpg"]
        head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                % len(data))
        # one byte every 0.1 s: each piece comes within any per-read timeout, the whole never does
        t0 = time.perf_counter()
        out, _ = _raw(port, head, (data[i:i + 1] for i in range(40)), pause=0.1)
        assert out.startswith(b"HTTP/1.1 408") and b"read-timeout" in out
        assert time.perf_counter() - t0 < 5
        # a client that sends headers and then nothing: the same, and the connection is closed
        out, first = _raw(port, head, ())
        assert out.startswith(b"HTTP/1.1 408") and 0.5 < first < 3
        # headers dribbled, never finished; or a connection that sends nothing at all: closed, no answer
        for head_part in (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n", b""):
            t0 = time.perf_counter()
            out, _ = _raw(port, head_part, (b"X-Slow: %d\r\n" % i for i in range(40)) if head_part else (), pause=0.1)
            assert out == b"" and time.perf_counter() - t0 < 3
        assert _post(url + "/v1/classify", data).status_code == 200


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_count_what_was_sent(model_dir, photos):
    svc = _service(model_dir)
    with thread_server(svc) as url:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
        for _ in range(3):
            assert _post(url + "/v1/classify", photos["astronaut.jpg"]).status_code == 200
        for _ in range(2):
            assert _post(url + "/v1/classify", b"nope").status_code == 400
        assert _post(url + "/v1/classify", b"x", "text/plain").status_code == 415
        assert _post(url + "/v1/explain", photos["astronaut.jpg"]).status_code == 200
        m = httpx.get(url + "/metrics").text
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/classify", status="200") == 3
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/classify", status="400") == 2
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/classify", status="415") == 1
        assert _metric(m, "vitkit_requests_total", endpoint="/v1/explain", status="200") == 1
        assert _metric(m, "vitkit_request_latency_seconds_count", endpoint="/v1/classify") == 6
        assert _metric(m, "vitkit_queue_time_seconds_count") == 4  # three classified + one explained
        assert _metric(m, "vitkit_batch_size_sum") == 4
        assert _metric(m, "vitkit_queue_depth") == 0
        assert "vitkit_batch_inference_seconds_bucket" in m and "vitkit_batch_tokens_bucket" in m


def test_config_and_handler_refuse_bad_settings(model_dir):
    for bad in (dict(max_batch=0), dict(max_queue=0), dict(timeout_s=0), dict(max_delay_ms=-1),
                dict(max_body_mb=0)):
        with pytest.raises(ValueError):
            ServeConfig(**bad)
    with pytest.raises(ValueError, match="patch size"):
        BatchingHandler.from_source(str(model_dir), sizes=[(36, 36)])
    with pytest.raises(ValueError, match="tokens"):
        BatchingHandler.from_source(str(model_dir), max_batch_tokens=10)
    h = BatchingHandler.from_source(str(model_dir))
    with pytest.raises(TypeError):
        h.decode("/etc/hostname")  # a string is never taken for a path
    assert json.dumps(h.describe())

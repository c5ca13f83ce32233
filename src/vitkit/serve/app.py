"""The HTTP service: a Starlette app around one :class:`Service` (handler + batcher + decode pool).

Routes: ``/`` (the page), ``POST /v1/classify``, ``POST /v1/explain``, ``GET /v1/model``, ``/healthz``,
``/readyz``, ``/metrics``, ``/openapi.json``, and KServe v2 (``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``).

Every refusal has one status (docs/serving.md): 400 bad input, 404 unknown model, 408 a client too slow
to send its body, 413 body or decoded pixels over the limit, 415 wrong content type, 503 + Retry-After
not ready / queue full / shutting down / out of memory, 504 over ``timeout_s``. Answers are JSON
``{"error": ...}``; a traceback goes to the server's log, never into a response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import DynamicBatcher, QueueFull, ShuttingDown
from .handler import BatchingHandler, RequestError, is_out_of_memory, overlay_png, parse_size
from .metrics import Metrics

log = logging.getLogger("vitkit.serve")
access_log = logging.getLogger("vitkit.serve.access")

RAW_TYPES = ("image/", "application/octet-stream")
EXPLAIN_METHODS = ("last", "rollout")


@dataclass
class ServeConfig:
    """The service's limits (``vitkit serve`` flags of the same names)."""

    max_batch: int = 32
    max_batch_tokens: int | None = None  # default: max_batch x the tokens of the model's own size
    max_delay_ms: float = 10.0
    max_queue: int = 128  # requests admitted at once (reading, decoding, queued, running)
    max_body_mb: float = 10.0
    timeout_s: float = 30.0  # a request still unanswered after this -> 504
    read_timeout_s: float = 30.0  # the whole request body must arrive within this -> 408
    decode_workers: int = 2
    drain_timeout_s: float = 30.0  # after SIGTERM, the longest wait for in-flight requests
    retry_after_s: int = 1
    sizes: tuple = ()

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "decode_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "timeout_s", "read_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass
class Service:
    """What the app serves: ``loader()`` builds the :class:`BatchingHandler` (on a thread, after the
    server is listening, so liveness answers while the model loads); ready once loaded and warmed."""

    loader: Callable[[], BatchingHandler]
    config: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        self.handler: BatchingHandler | None = None
        self.batcher: DynamicBatcher | None = None
        self.pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="vitkit-decode")
        self.metrics = Metrics()
        self.state = "loading"  # loading -> ready -> draining; or failed
        self.load_error: str | None = None
        self.active = 0  # HTTP requests being answered (the drain waits for 0)
        self.admitted = 0  # inference requests admitted (bounded by max_queue)
        self.drain_started: float | None = None
        self._lock = threading.Lock()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._load, name="vitkit-load", daemon=True)
        t.start()
        return t

    def _load(self) -> None:
        try:
            h = self.loader()
            h.warmup()
            self.batcher = DynamicBatcher(self._run_batch, self._cap, max_delay_s=self.config.max_delay_ms / 1e3,
                                          max_queue=self.config.max_queue, on_batch=self._on_batch)
            self.handler = h
            if self.state == "loading":
                self.state = "ready"
                self.metrics.ready.set(1)
            log.info("model %s ready on %s: %s", h.name, h.runner.device, h.runner.precision)
        except Exception as e:  # noqa: BLE001 - the service stays up to say why it is not ready
            self.state, self.load_error = "failed", f"{type(e).__name__}: {e}"
            log.error("the model could not be loaded: %s", self.load_error)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def begin_drain(self) -> None:
        """SIGTERM: readiness turns 503 and new inference requests are refused; in-flight ones finish."""
        if self.state != "draining":
            self.state = "draining"
            self.drain_started = time.monotonic()
            self.metrics.ready.set(0)
            log.info("draining: %d request(s) in flight", self.active)

    def drained(self) -> bool:
        if self.drain_started is None:
            return False
        return self.active == 0 or time.monotonic() - self.drain_started > self.config.drain_timeout_s

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- the worker side ---------------------------------------------------------------------------
    def _cap(self, key) -> int:
        return self.handler.cap(key[1]) if key[0] == "classify" else 1

    def _run_batch(self, key, payloads: list) -> list:
        import torch

        h = self.handler
        try:
            if key[0] == "classify":
                probs = h.forward(torch.stack([p.pixels for p in payloads]))
                return list(probs)
            return [h.explain(img, **kw) for img, kw in payloads]
        except BaseException as e:
            if is_out_of_memory(e) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    def _on_batch(self, key, jobs, seconds: float, error) -> None:
        m = self.metrics
        m.inference.observe(seconds)
        m.batch_size.observe(len(jobs))
        if key[0] == "classify":
            m.batch_tokens.observe(len(jobs) * self.handler.tokens_for(key[1]))
        for j in jobs:
            m.queue_time.observe(j.started - j.enqueued)
        if error is not None:
            m.batch_errors.labels("out_of_memory" if is_out_of_memory(error) else "other").inc()
        m.queue_depth.set(self.batcher.depth)

    # -- the request side --------------------------------------------------------------------------
    def admit(self) -> None:
        """Refuse at once (503 + Retry-After) what cannot be taken now."""
        if self.state == "draining":
            raise RequestError(503, "the service is shutting down")
        if self.state == "failed":
            raise RequestError(503, f"the model could not be loaded: {self.load_error}")
        if not self.ready:
            raise RequestError(503, "the model is loading; retry shortly")
        with self._lock:
            if self.admitted >= self.config.max_queue:
                raise RequestError(503, f"the service is busy: {self.admitted} requests in progress "
                                        f"(--max-queue {self.config.max_queue}); retry shortly")
            self.admitted += 1

    def release(self) -> None:
        with self._lock:
            self.admitted -= 1

    async def in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def run_job(self, key, payload, deadline: float):
        """Queue one job and wait for its batch, up to the request's deadline."""
        try:
            job = self.batcher.submit(key, payload)
        except QueueFull as e:
            raise RequestError(503, f"the service is busy: {e}; retry shortly") from None
        except ShuttingDown:
            raise RequestError(503, "the service is shutting down") from None
        self.metrics.queue_depth.set(self.batcher.depth)
        remaining = deadline - time.perf_counter()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(job.future), max(remaining, 0.001))
        except asyncio.TimeoutError:
            job.future.cancel()  # dropped if its batch has not started
            raise RequestError(504, f"no answer within --timeout-s {self.config.timeout_s:g} s") from None
        except Exception as e:
            if is_out_of_memory(e):
                raise RequestError(503, f"out of memory on a batch of {job.batch_size} image(s); "
                                        "the service goes on: retry (a smaller --max-batch avoids it)") from None
            raise
        return result, job


# -- reading requests --------------------------------------------------------------------------------
async def read_body(request: Request, limit: int, read_timeout: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (never buffered beyond it; a declared
    Content-Length over the limit is refused before reading any of it), or with 408 when the whole body has
    not arrived within ``read_timeout`` seconds (a client dribbling bytes is dropped, however it paces them)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(413, f"the body is {int(declared)} bytes; the limit is {limit} (--max-body-mb)")
    chunks, n = [], 0
    deadline = time.perf_counter() + read_timeout
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - time.perf_counter(), 0.001))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(408, f"the body did not arrive within {read_timeout:g} s "
                                    f"({n} bytes came; --read-timeout-s)") from None
        except ClientDisconnect:
            raise RequestError(400, "the client went away before sending the whole body") from None
        n += len(chunk)
        if n > limit:
            raise RequestError(413, f"the body passed the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, service: Service) -> bytes:
    """The image bytes of a classify/explain request: a multipart ``file`` field or a raw image body."""
    return await read_image_body(request, service.config.max_body_bytes, service.config.read_timeout_s)


async def read_image_body(request: Request, limit: int, read_timeout: float) -> bytes:
    """:func:`read_upload` with its limits given (the Ray Serve deployment calls this too)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "multipart/form-data" or ctype.startswith(RAW_TYPES)):
        raise RequestError(415, f"content type {ctype or '(none)'!r} is not accepted: send multipart/form-data "
                                "with a 'file' field, or the image bytes as image/* or application/octet-stream")
    body = await read_body(request, limit, read_timeout)
    if ctype != "multipart/form-data":
        return body
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # noqa: BLE001 - a malformed multipart body
        raise RequestError(400, f"the multipart body could not be parsed: {getattr(e, 'detail', e)}") from None
    files = [v for k, v in form.multi_items() if k == "file"]
    if not files:
        raise RequestError(400, "the multipart body has no 'file' field")
    if len(files) > 1:
        raise RequestError(400, "one image per request: send several requests (they are batched together)")
    f = files[0]
    if isinstance(f, str):
        # a text field: never a path or URL to open
        raise RequestError(400, "the 'file' field is text, not an uploaded file (a path or URL is never opened)")
    data = await f.read()
    await form.close()
    return data


def _int_param(request: Request, name: str, default: int | None, lo: int | None = None, hi: int | None = None):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise RequestError(400, f"{name} must be an integer, got {raw!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RequestError(400, f"{name} must be in {lo}..{hi}, got {v}")
    return v


def _size_param(request: Request):
    try:
        return parse_size(request.query_params.get("size"))
    except ValueError as e:
        raise RequestError(400, str(e)) from None


def error_response(status: int, message: str, retry_after: int | None = None, close: bool = False) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def refusal(service: Service, e: RequestError) -> JSONResponse:
    retry = service.config.retry_after_s if e.status == 503 else None
    return error_response(e.status, str(e), retry, close=e.status in (408, 413))


# -- endpoints -------------------------------------------------------------------------------------
def build_routes(service: Service) -> list[Route]:
    page = _page_files()

    def admitted(work):
        """An endpoint that takes a place in the queue: refused at once when it is full, answered 504 past
        --timeout-s, its place given back whatever happens; ``work(request, t0, deadline)`` does the rest."""
        async def endpoint(request: Request):
            t0 = time.perf_counter()
            try:
                service.admit()
            except RequestError as e:
                return refusal(service, e)
            try:
                return await work(request, t0, t0 + service.config.timeout_s)
            except RequestError as e:
                return refusal(service, e)
            except asyncio.TimeoutError:
                return error_response(504, f"no answer within --timeout-s {service.config.timeout_s:g} s")
            finally:
                service.release()
        return endpoint

    @admitted
    async def classify(request: Request, t0: float, deadline: float):
        h = service.handler
        topk = _int_param(request, "topk", 5, 1, len(h.labels))
        size = _size_param(request)
        h.resolve_size(size)
        data = await read_upload(request, service)
        prep = await asyncio.wait_for(service.in_pool(h.prepare, data, size), deadline - time.perf_counter())
        probs, job = await service.run_job(("classify", prep.key), prep, deadline)
        t1 = time.perf_counter()
        return JSONResponse({
            "model": h.name, "predictions": h.topk(probs, topk),
            "input": {"size": list(prep.key), "tokens": prep.tokens, "image_size": list(prep.image_hw)},
            "timing": {"decode_ms": round(prep.decode_ms, 3), "queue_ms": round((job.started - job.enqueued) * 1e3, 3),
                       "total_ms": round((t1 - t0) * 1e3, 3), "batch_size": job.batch_size},
        })

    @admitted
    async def explain_ep(request: Request, t0: float, deadline: float):
        h = service.handler
        method = request.query_params.get("method", "last")
        if method not in EXPLAIN_METHODS:
            raise RequestError(400, f"method must be one of {', '.join(EXPLAIN_METHODS)}, got {method!r}")
        fmt = request.query_params.get("format", "png")
        if fmt not in ("png", "json"):
            raise RequestError(400, f"format must be png or json, got {fmt!r}")
        depth, heads = len(h.model.blocks), h.model.cfg.heads
        layer = _int_param(request, "layer", -1, -depth, depth - 1)
        head = _int_param(request, "head", None, 0, heads - 1)
        if head is not None and method == "rollout":
            raise RequestError(400, "head picks one head of the last-layer map; rollout averages every head")
        topk = _int_param(request, "topk", 5, 1, len(h.labels))
        size = _size_param(request)
        h.resolve_size(size)
        data = await read_upload(request, service)
        img = await asyncio.wait_for(service.in_pool(h.decode, data), deadline - time.perf_counter())
        kw = dict(method=method, layer=layer, head=head, size=size, topk=topk)
        expl, job = await service.run_job(("explain",), (img, kw), deadline)
        meta = {"method": expl.method, "layer": expl.layer, "head": expl.head, "grid": list(expl.grid),
                "description": expl.describe(),
                "predictions": [{"label": lab, "score": s} for lab, s in expl.predictions]}
        if fmt == "json":
            meta["heatmap"] = [[round(float(v), 6) for v in row] for row in expl.heatmap]
            meta["model"] = h.name
            meta["timing"] = {"total_ms": round((time.perf_counter() - t0) * 1e3, 3)}
            return JSONResponse(meta)
        png = await service.in_pool(overlay_png, expl)
        return Response(png, media_type="image/png", headers={"X-Vitkit-Explanation": expl.describe()})

    async def model_info(request: Request):
        if service.handler is None:
            return error_response(503, "the model is loading; retry shortly", service.config.retry_after_s)
        return JSONResponse(service.handler.describe())

    async def healthz(request: Request):
        return JSONResponse({"status": "alive", "state": service.state})

    async def readyz(request: Request):
        body = {"ready": service.ready, "state": service.state}
        if service.load_error:
            body["error"] = service.load_error
        return JSONResponse(body, status_code=200 if service.ready else 503)

    async def metrics(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if service.batcher is not None:
            service.metrics.queue_depth.set(service.batcher.depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request):
        from .openapi import schema

        return JSONResponse(schema())

    async def index(request: Request):
        return Response(page["index.html"], media_type="text/html; charset=utf-8")

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in page or name == "index.html":
            return error_response(404, f"no such file: {name}")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(page[name], media_type=kind + "; charset=utf-8")

    # -- KServe v2 -------------------------------------------------------------------------------
    def v2_model(name: str):
        if service.handler is None:
            raise RequestError(503, "the model is loading; retry shortly")
        if name != service.handler.name:
            raise RequestError(404, f"no model named {name!r}; this service serves {service.handler.name!r}")
        return service.handler

    async def v2_server(request: Request):
        from .. import __version__

        return JSONResponse({"name": "vitkit", "version": __version__, "extensions": []})

    async def v2_live(request: Request):
        return JSONResponse({"live": True})

    async def v2_ready(request: Request):
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    async def v2_model_meta(request: Request):
        try:
            h = v2_model(request.path_params["name"])
        except RequestError as e:
            return refusal(service, e)
        return JSONResponse({
            "name": h.name, "versions": ["1"], "platform": "pytorch_vitkit",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
                        {"name": "score", "datatype": "FP32", "shape": [-1, -1]}],
            "parameters": {"topk": 5, "labels": len(h.labels)}})

    async def v2_model_ready(request: Request):
        try:
            v2_model(request.path_params["name"])
        except RequestError as e:
            return refusal(service, e)
        return JSONResponse({"name": request.path_params["name"], "ready": service.ready},
                            status_code=200 if service.ready else 503)

    @admitted
    async def v2_infer(request: Request, t0: float, deadline: float):
        h = v2_model(request.path_params["name"])
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestError(415, f"content type {ctype!r} is not accepted: the v2 protocol takes application/json")
        body = await read_body(request, service.config.max_body_bytes, service.config.read_timeout_s)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not JSON: {e}") from None
        images, topk = _v2_inputs(doc, len(h.labels))
        preps = await asyncio.gather(*[asyncio.wait_for(service.in_pool(h.prepare, b, None),
                                                        deadline - time.perf_counter()) for b in images])
        results = await asyncio.gather(*[service.run_job(("classify", p.key), p, deadline) for p in preps])
        labels, scores = [], []
        for probs, _ in results:
            preds = h.topk(probs, topk)
            labels += [p["label"] for p in preds]
            scores += [p["score"] for p in preds]
        k = len(labels) // max(len(images), 1)
        out = {"model_name": h.name, "model_version": "1",
               "outputs": [{"name": "label", "datatype": "BYTES", "shape": [len(images), k], "data": labels},
                           {"name": "score", "datatype": "FP32", "shape": [len(images), k], "data": scores}]}
        if isinstance(doc.get("id"), str):
            out["id"] = doc["id"]
        return JSONResponse(out)

    return [
        Route("/", index), Route("/static/{name}", static),
        Route("/v1/classify", classify, methods=["POST"]), Route("/v1/explain", explain_ep, methods=["POST"]),
        Route("/v1/model", model_info), Route("/healthz", healthz), Route("/readyz", readyz),
        Route("/metrics", metrics), Route("/openapi.json", openapi),
        Route("/v2", v2_server), Route("/v2/health/live", v2_live), Route("/v2/health/ready", v2_ready),
        Route("/v2/models/{name}", v2_model_meta), Route("/v2/models/{name}/ready", v2_model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
    ]


def _v2_inputs(doc: Any, num_labels: int) -> tuple[list[bytes], int]:
    """KServe v2 inference request -> (image bytes, topk). One input of datatype BYTES whose data are
    base64-encoded image files; ``parameters.topk`` (default 5). A string is only ever base64-decoded:
    a path or a URL in it is never opened or fetched."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise RequestError(400, "a v2 inference request needs 'inputs': [one tensor of datatype BYTES]")
    t = doc["inputs"][0]
    if not isinstance(t, dict) or t.get("datatype") != "BYTES":
        raise RequestError(400, "the input tensor must have datatype BYTES (base64-encoded image files)")
    data = t.get("data")
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(d, str) for d in data):
        raise RequestError(400, "the input's 'data' must be a non-empty list of base64 strings")
    if len(data) > 64:
        raise RequestError(400, f"{len(data)} images in one request; the limit is 64")
    images = []
    for i, d in enumerate(data):
        try:
            images.append(base64.b64decode(d, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"input data[{i}] is not base64 (an image file's bytes, base64-encoded; "
                                    "paths and URLs are never opened)") from None
    params = doc.get("parameters") or {}
    topk = params.get("topk", 5) if isinstance(params, dict) else 5
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= num_labels:
        raise RequestError(400, f"parameters.topk must be an integer in 1..{num_labels}, got {topk!r}")
    return images, topk


def _page_files() -> dict[str, bytes]:
    root = resources.files("vitkit.serve") / "page"
    return {name: (root / name).read_bytes() for name in ("index.html", "app.js", "style.css")}


# -- middleware: metrics, access log, in-flight count ---------------------------------------------
ENDPOINTS = {"/", "/v1/classify", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json",
             "/v2", "/v2/health/live", "/v2/health/ready"}


def _endpoint(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/v2/models/"):
        tail = path.rsplit("/", 1)[-1]
        return "/v2/models/{name}/" + tail if tail in ("infer", "ready") else "/v2/models/{name}"
    return "/static" if path.startswith("/static/") else "other"


class ObserveMiddleware:
    """Counts requests by endpoint and status, times them, logs one JSON line each, and holds the
    in-flight count the SIGTERM drain waits on. Any exception becomes a JSON 500 (traceback to the log)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        svc, t0 = self.service, time.perf_counter()
        status, sent_bytes, started = 500, 0, False
        svc.active += 1
        svc.metrics.in_flight.inc()

        async def observe(message):
            nonlocal status, sent_bytes, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except Exception:  # noqa: BLE001 - never a traceback in a response
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                status = 500
                await error_response(500, "internal error (the server's log has the details)")(scope, receive, observe)
        finally:
            svc.active -= 1
            svc.metrics.in_flight.dec()
            ep = _endpoint(scope.get("path", ""))
            dt = time.perf_counter() - t0
            svc.metrics.requests.labels(ep, str(status)).inc()
            svc.metrics.latency.labels(ep).observe(dt)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}", "method": scope.get("method"),
                    "path": scope.get("path"), "status": status, "ms": round(dt * 1e3, 3), "bytes": sent_bytes}))


def create_app(service: Service) -> Starlette:
    """The ASGI app. Its lifespan starts loading the model (``service.start()``) and stops the worker."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = Starlette(routes=build_routes(service), lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _not_allowed})
    app.add_middleware(ObserveMiddleware, service=service)
    app.state.service = service
    return app


async def _not_found(request, exc):
    return error_response(404, f"no such endpoint: {request.url.path} (GET /openapi.json lists them)")


async def _not_allowed(request, exc):
    return error_response(405, f"{request.method} is not allowed on {request.url.path}")

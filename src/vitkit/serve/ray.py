"""Scale-out on Ray Serve: the same :class:`~vitkit.serve.handler.BatchingHandler` in each replica.

``@serve.batch`` gathers concurrent requests of one replica by count (up to ``max_batch``, waiting at most
``max_delay_ms``); the handler's own plan then splits that batch by shape and token budget, so one forward
never mixes shapes, as in the single-process service. Decoding and preprocessing are the handler's
(vitkit's safe decoder, the model's preprocessing), run off the replica's event loop.

    from ray import serve
    from vitkit.serve.ray import build_app
    serve.run(build_app("runs/photos/model", replicas=4))     # POST /v1/classify on Ray's HTTP proxy

or ``vitkit serve SRC --ray --replicas 4``. Needs ``pip install 'vitkit[ray]'``.
Endpoints: ``POST /v1/classify`` (same answers as the single-process service), ``GET /v1/model``,
``GET /healthz``; statuses 400/413/415 as there.
"""

from __future__ import annotations

import asyncio
import time

from .handler import BatchingHandler, Prepared, RequestError, parse_size


def build_app(src: str, load_kwargs: dict | None = None, handler_kwargs: dict | None = None, *,
              max_delay_ms: float = 10.0, replicas: int = 1, num_cpus: float = 1.0, max_body_mb: float = 10.0,
              read_timeout_s: float = 30.0):
    """A Ray Serve application (``serve.run(build_app(...))``) of ``replicas`` copies of the model."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from .app import error_response, read_image_body

    handler_kwargs = dict(handler_kwargs or {})
    max_batch = int(handler_kwargs.get("max_batch", 32))
    limit = int(max_body_mb * 1024 * 1024)

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus})
    class VitkitClassifier:
        def __init__(self):
            self.handler = BatchingHandler.from_source(src, load_kwargs, **handler_kwargs)
            self.handler.warmup()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_delay_ms / 1e3)
        async def probabilities(self, items: list[Prepared]) -> list:
            t0 = time.perf_counter()
            probs = await asyncio.to_thread(self.handler.probabilities, items)
            return [(p, len(items), t0) for p in probs]

        async def __call__(self, request: Request):
            h = self.handler
            path = request.url.path.rstrip("/") or "/"
            if path.endswith("/healthz"):
                return JSONResponse({"status": "alive", "state": "ready"})
            if path.endswith("/v1/model") and request.method == "GET":
                return JSONResponse(h.describe())
            if not (path.endswith("/v1/classify") and request.method == "POST"):
                return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
            t0 = time.perf_counter()
            try:
                raw_topk = request.query_params.get("topk", "5")
                if not raw_topk.isdigit() or not 1 <= int(raw_topk) <= len(h.labels):
                    raise RequestError(400, f"topk must be an integer in 1..{len(h.labels)}, got {raw_topk!r}")
                try:
                    size = parse_size(request.query_params.get("size"))
                except ValueError as e:
                    raise RequestError(400, str(e)) from None
                h.resolve_size(size)
                data = await read_image_body(request, limit, read_timeout_s)
                prep = await asyncio.to_thread(h.prepare, data, size)
                probs, batch, started = await self.probabilities(prep)
            except RequestError as e:
                return error_response(e.status, str(e))
            return JSONResponse({
                "model": h.name, "predictions": h.topk(probs, int(raw_topk)),
                "input": {"size": list(prep.key), "tokens": prep.tokens, "image_size": list(prep.image_hw)},
                "timing": {"decode_ms": round(prep.decode_ms, 3), "total_ms": round((time.perf_counter() - t0) * 1e3, 3),
                           "batch_size": batch}})

    return VitkitClassifier.bind()


def run_ray(src: str, *, load_kwargs: dict | None = None, handler_kwargs: dict | None = None,
            host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, max_delay_ms: float = 10.0) -> int:
    """``vitkit serve SRC --ray``: start (or join, with RAY_ADDRESS) Ray, deploy, serve until SIGTERM/Ctrl-C."""
    import signal
    import threading

    try:
        import ray
        from ray import serve
    except ImportError:
        from ..errors import UserError

        raise UserError("vitkit serve --ray needs Ray Serve: pip install 'vitkit[ray]'") from None
    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(src, load_kwargs, handler_kwargs, max_delay_ms=max_delay_ms, replicas=replicas),
              route_prefix="/")
    print(f"vitkit serve: Ray Serve on http://{host}:{port} ({replicas} replica(s)); SIGTERM or Ctrl-C stops")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0

"""`vitkit serve SRC`: an HTTP service (JSON API, KServe v2, a web page) with dynamic batching."""

from __future__ import annotations

import argparse

from ..data.decode import DEFAULT_MAX_PIXELS
from .main import UserError
from .model_args import add_model_args, load_kwargs
from .predict import AUTO_HELP, add_int8_args, int8_wanted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: JSON API, KServe v2, a web page",
                       description="Serve a model over HTTP on 127.0.0.1 (unless --host says otherwise): "
                                   "POST /v1/classify, POST /v1/explain, GET /v1/model, /healthz, /readyz, "
                                   "/metrics, the KServe v2 protocol under /v2, and a page at /. Concurrent "
                                   "requests are batched by shape and token count. SIGTERM drains and exits 0. "
                                   "docs/serving.md has the API and every status.")
    p.add_argument("src", help="the model: anything vitkit.load accepts")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward at most (default 32)")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="tokens per forward at most (default: max-batch x the tokens of the model's own size)")
    p.add_argument("--max-delay-ms", type=float, default=10.0,
                   help="longest a request waits for others to share its forward (default 10)")
    p.add_argument("--max-queue", type=int, default=128,
                   help="inference requests taken at once; more are refused at once with 503 + Retry-After "
                        "(default 128)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body, MiB (default 10) -> 413")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images declaring more pixels than this, before decoding -> 413 "
                        f"(default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request unanswered after this -> 504 (default 30)")
    p.add_argument("--read-timeout-s", type=float, default=30.0,
                   help="a request body not fully arrived after this long is dropped -> 408 (default 30)")
    p.add_argument("--sizes", default=None,
                   help="other input sizes a request may ask for with ?size=, e.g. 160,288x224 (the model then "
                        "takes them: dynamic_img_size)")
    p.add_argument("--decode-workers", type=int, default=2, help="threads decoding and preprocessing (default 2)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="after SIGTERM, the longest wait for requests in flight (default 30)")
    p.add_argument("--device", default="auto", help="where to run: auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help=AUTO_HELP + " (the first request's batch is that batch); fp32: full precision; bf16, fp16: "
                        "autocast; int8: classification in ONNX Runtime, statically quantised and checked against "
                        "fp32 at start-up (needs --calibrate). explain stays fp32")
    add_int8_args(p)
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request on stderr")
    p.add_argument("--ray", action="store_true",
                   help="run as a Ray Serve deployment instead (pip install 'vitkit[ray]'); --replicas sets how many")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray; default 1)")
    add_model_args(p)
    p.set_defaults(func=run)


def parse_sizes(text: str | None) -> list[tuple[int, int]]:
    from ..serve.handler import parse_size

    if not text:
        return []
    try:
        return [parse_size(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise UserError(f"--sizes: {e}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import python_multipart  # noqa: F401  (starlette parses multipart bodies with it)
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(f"vitkit serve needs {e.name}: pip install 'vitkit[serve]'") from None
    from ..serve.app import ServeConfig, Service
    from ..serve.handler import BatchingHandler
    from ..weights.hub import looks_like_repo_id
    from ..weights.pretrained import find_pretrained

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if not Path(args.src).exists() and find_pretrained(args.src) is None and not looks_like_repo_id(args.src):
        raise FileNotFoundError(f"checkpoint {args.src!r} does not exist, and is not a Hugging Face hub id "
                                "('org/name') or a known pretrained name")
    sizes = parse_sizes(args.sizes)
    try:
        cfg = ServeConfig(max_batch=args.max_batch, max_batch_tokens=args.max_batch_tokens,
                          max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                          timeout_s=args.timeout_s, read_timeout_s=args.read_timeout_s,
                          decode_workers=args.decode_workers, drain_timeout_s=args.drain_timeout_s,
                          sizes=tuple(sizes))
    except ValueError as e:
        raise UserError(str(e)) from None
    kw = load_kwargs(args)
    if sizes:
        kw["dynamic_img_size"] = True
    handler_kw = dict(device=args.device, dtype=args.dtype, max_pixels=args.max_pixels, max_batch=args.max_batch,
                      max_batch_tokens=args.max_batch_tokens, sizes=sizes)
    if int8_wanted(args):
        handler_kw.update(device="cpu" if args.dtype == "int8" else args.device, int8=dict(calibrate=args.calibrate, check=args.check,
                                                  calibration_images=args.calibration_images,
                                                  check_images=args.check_images, max_pixels=args.max_pixels,
                                                  min_agreement=args.min_agreement))
    if args.ray:
        from ..serve.ray import run_ray

        return run_ray(args.src, load_kwargs=kw, handler_kwargs=handler_kw, host=args.host, port=args.port,
                       replicas=args.replicas, max_delay_ms=args.max_delay_ms)
    from ..serve.server import run_server

    service = Service(lambda: BatchingHandler.from_source(args.src, kw, **handler_kw), cfg)
    return run_server(service, host=args.host, port=args.port, access_log=not args.no_access_log)

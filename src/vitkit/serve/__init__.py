"""The HTTP service: ``vitkit serve SRC`` (docs/serving.md).

:class:`BatchingHandler` owns the model (eval mode, set once) and does decode -> plan -> forward;
:class:`DynamicBatcher` groups concurrent requests by shape on one worker thread; :func:`create_app`
is the Starlette app (JSON API, KServe v2, the page); :func:`run_server` runs it on uvicorn with a
SIGTERM drain; :mod:`vitkit.serve.ray` wraps the same handler in a Ray Serve deployment.
"""

from .batcher import DynamicBatcher, QueueFull
from .handler import BatchingHandler, Prepared, RequestError

__all__ = ["BatchingHandler", "DynamicBatcher", "Prepared", "QueueFull", "RequestError", "ServeConfig", "Service",
           "create_app", "run_server"]


def __getattr__(name: str):  # the app needs starlette/uvicorn (the `serve` extra): only when asked for
    if name in ("ServeConfig", "Service", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(f"module 'vitkit.serve' has no attribute {name!r}")

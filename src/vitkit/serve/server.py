"""Running the app on uvicorn, with a SIGTERM drain.

First SIGTERM (or Ctrl-C): readiness turns 503, new inference requests are refused (503), the requests
in flight finish, then uvicorn shuts down and the process exits 0. The drain waits at most
``drain_timeout_s``; a second signal stops at once.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from .app import Service, create_app

log = logging.getLogger("vitkit.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose first signal starts a drain instead of closing the listener at once."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame) -> None:  # runs in the signal handler (main thread)
        if self.service.state == "draining" or self.should_exit:
            self.should_exit = True
            self.force_exit = True
            return
        self.service.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.service.drained() or self.service.state == "failed":
            self.should_exit = True
        return await super().on_tick(counter)


def log_to_stderr(access: bool = True) -> None:
    """The service's lines on stderr: ``vitkit serve: ...`` notes, and one JSON line per request."""
    for name, fmt in (("vitkit.serve", "vitkit serve: %(message)s"), ("vitkit.serve.access", "%(message)s")):
        lg = logging.getLogger(name)
        if not any(getattr(h, "_vitkit_serve", False) for h in lg.handlers):
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter(fmt))
            h._vitkit_serve = True
            lg.addHandler(h)
        lg.propagate = False
        lg.setLevel(logging.INFO if (access or name == "vitkit.serve") else logging.WARNING)


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000, access_log: bool = True) -> int:
    """Serve until SIGTERM/SIGINT, drain, exit status 0 (2 when the model cannot be loaded)."""
    log_to_stderr(access_log)
    config = uvicorn.Config(create_app(service), host=host, port=port, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=int(service.config.drain_timeout_s) + 1, lifespan="on",
                            timeout_keep_alive=5)
    server = DrainingServer(config, service)
    log.info("listening on http://%s:%d (SIGTERM drains and exits)", host if ":" not in host else f"[{host}]", port)
    server.run()
    if service.state == "failed":
        log.error("stopped: the model could not be loaded")
        return 2
    log.info("stopped")
    return 0


__all__ = ["DrainingServer", "run_server", "log_to_stderr"]

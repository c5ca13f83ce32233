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


def header_timeout_protocol(seconds: float):
    """uvicorn's httptools protocol, with a limit on how long a request's headers may take to arrive (from
    the connection's start, or from the first byte of a request on a kept-alive connection): a client that
    connects and sends nothing, or dribbles its headers, is disconnected after ``seconds``. uvicorn itself
    has no such limit (its keep-alive timer runs only between requests). None when httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _vitkit_timer = None

        def _vitkit_arm(self) -> None:
            self._vitkit_disarm()
            self._vitkit_timer = self.loop.call_later(seconds, self._vitkit_expire)

        def _vitkit_disarm(self) -> None:
            if self._vitkit_timer is not None:
                self._vitkit_timer.cancel()
                self._vitkit_timer = None

        def _vitkit_expire(self) -> None:
            if self.transport is not None and not self.transport.is_closing():
                log.info("dropped %s: no complete request headers within %g s", "%s:%d" % self.client
                         if self.client else "a client", seconds)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._vitkit_arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._vitkit_arm()

        def on_headers_complete(self) -> None:
            self._vitkit_disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._vitkit_disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def uvicorn_config(app, service: Service, host: str, port: int) -> uvicorn.Config:
    """The uvicorn settings of the service: no uvicorn access log (ours is JSON), the drain's grace, the
    header timeout (``read_timeout_s``)."""
    proto = header_timeout_protocol(service.config.read_timeout_s)
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                          timeout_graceful_shutdown=int(service.config.drain_timeout_s) + 1, lifespan="on",
                          timeout_keep_alive=5, **({"http": proto} if proto is not None else {}))


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
    config = uvicorn_config(create_app(service), service, host, port)
    server = DrainingServer(config, service)
    log.info("listening on http://%s:%d (SIGTERM drains and exits)", host if ":" not in host else f"[{host}]", port)
    server.run()
    if service.state == "failed":
        log.error("stopped: the model could not be loaded")
        return 2
    log.info("stopped")
    return 0


__all__ = ["DrainingServer", "run_server", "log_to_stderr"]

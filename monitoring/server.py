"""The HTTP endpoint of a worker or the exporter: ``/healthz`` answers whether it is healthy, any other path
serves the registry in the Prometheus text format (``/metrics`` by convention)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from dscbatch.core import threads
from dscbatch.core.errors import SettingsError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

HEALTH_PATH = "/healthz"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A slow scrape must not hold up the liveness probe, nor keep the process from exiting.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the worker's log."""


class MetricsServer:
    """``registry`` on every path but ``/healthz``, which answers 200 while ``healthy()`` is true and every essential
    thread of the process runs (``core.threads``), else 503."""

    # All interfaces by default: Prometheus scrapes from other machines.
    def __init__(self, port: int, registry: CollectorRegistry, healthy: Callable[[], bool],
                 host: str = "0.0.0.0") -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == HEALTH_PATH:
                dead = threads.gone()
                ok = not dead and healthy()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                reason = f"unhealthy: thread {', '.join(dead)} is gone\n" if dead else "unhealthy\n"
                return [b"ok\n" if ok else reason.encode()]
            body: Iterable[bytes] = metrics(environ, start_response)
            return body

        try:
            self.httpd = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        except OSError as error:
            raise SettingsError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from None

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def start(self) -> None:
        """Serve on a daemon thread and return."""
        threading.Thread(target=self.httpd.serve_forever, name="metrics-server", daemon=True).start()

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

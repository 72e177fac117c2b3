"""The server's own metrics: requests by route template and status, and their latency.

Routes are labelled by their template (``/v1/batches/{batch_id}``), never by the path, so ids (and nothing a
client sends, keys included) never become label values.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

UNMATCHED = "unmatched"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dscbatch_server_requests", "HTTP requests answered, by route template, method "
                                "and status code", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dscbatch_server_request_duration_seconds", "Time to answer a request, by route "
                                 "template and method", ["route", "method"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = self._route(request)
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        self.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    @staticmethod
    def _route(request: Request) -> str:
        for route in request.app.router.routes:
            match, _ = route.matches(request.scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED))
        return UNMATCHED

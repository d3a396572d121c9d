"""Prometheus metrics of the HTTP service, and the ASGI middleware that records them.

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several apps (tests) never
share counters. With several worker processes (``nextwatch serve --workers N``), prometheus_client's
multiprocess mode sums the workers' values. Requests are labelled by route *template*
(``/v1/users/{user_id}``), never by raw path, so label cardinality stays bounded whatever
clients send.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import unquote_to_bytes

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.exceptions import HTTPException

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self._versions: set[str] = set()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nextwatch_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nextwatch_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "nextwatch_events_stored", "Events durably stored.", registry=self.registry
        )
        self.replays = Counter(
            "nextwatch_event_replays",
            "Event requests answered from an earlier request with the same idempotency key.",
            registry=self.registry,
        )
        self.swaps = Counter(
            "nextwatch_model_swaps", "Hot swaps of the serving model.", registry=self.registry
        )
        self.model = Gauge(
            "nextwatch_model_info",
            "1 for the serving model version.",
            ["version"],
            registry=self.registry,
            multiprocess_mode="liveall",  # one series per live worker process
        )

    def serving(self, version: str) -> None:
        """Point ``nextwatch_model_info`` at ``version`` (earlier versions drop to 0; clearing
        labels is not possible in multiprocess mode)."""
        for old in self._versions:
            self.model.labels(version=old).set(0)
        self._versions.add(version)
        self.model.labels(version=version).set(1)

    def exposition(self) -> bytes:
        """The text format; with ``$PROMETHEUS_MULTIPROC_DIR`` set (several worker
        processes), the sum over all of them."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request (cheaper than
    ``BaseHTTPMiddleware``, and it sees the status of streamed responses)."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare a
    Content-Length (a chunked body is counted as it arrives)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await _too_large(send, self.max_bytes)
                    return
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_bytes)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes an HTTPException raised while it reads the body
    through (any other exception there becomes a 400), so the client gets this 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


async def _too_large(send, max_bytes: int) -> None:
    await _refuse(send, 413, f"request body is larger than {max_bytes} bytes")


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PathEncodingMiddleware:
    """Refuse with 400 a path whose percent-decoded bytes are not UTF-8. The server decodes such
    bytes to U+FFFD, so ``/v1/users/%ff`` and ``/v1/users/%fe`` would both read one user."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                await _refuse(send, 400, "path: not valid UTF-8 once percent-decoded")
                return
        await self.app(scope, receive, send)

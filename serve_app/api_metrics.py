"""API latency by route, method and status through `ray.util.metrics` (recorded in each Serve replica)."""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds: most answers take milliseconds; long polls of agents wait up to 30 s.
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

Recorder = Callable[[str, str, int, float], None]


def ray_recorder() -> Recorder:
    """Records into a Ray histogram inside a Ray worker (a Serve replica); records nothing elsewhere (tests)."""
    if not ray.is_initialized():
        return lambda route, method, status, seconds: None
    from ray.util import metrics

    histogram = metrics.Histogram(
        "dcluster_api_latency_seconds",
        "API answer time by route, method and status",
        boundaries=LATENCY_BOUNDARIES,
        tag_keys=("route", "method", "status"),
    )

    def record(route: str, method: str, status: int, seconds: float) -> None:
        histogram.observe(seconds, tags={"route": route, "method": method, "status": str(status)})

    return record


class ApiLatency:
    """ASGI middleware: times every HTTP request and records it under its route's template (never the raw path)."""

    def __init__(self, app: ASGIApp, recorder_factory: Callable[[], Recorder] | None = None):
        self.app = app
        self._factory = recorder_factory
        self._record: Recorder | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._record is None:
            # Looked up at the first request (not bound at import), so a test can stand in for Ray's metrics.
            self._record = (self._factory or ray_recorder)()
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            self._record(getattr(route, "path", "unmatched"), scope["method"], status, time.perf_counter() - started)

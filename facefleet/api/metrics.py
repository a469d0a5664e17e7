"""Prometheus metrics: request counts and latencies (ASGI middleware) and run/queue gauges read at scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facefleet.platform.db.models import Notification, RetrainPolicy, Run

log = logging.getLogger("facefleet.api.metrics")
RUN_STATUSES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")


class ApiMetrics:
    """The app's own registry (one per app, so tests can build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facefleet_http_requests",
            "HTTP requests handled",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facefleet_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class PrometheusMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware) labelling by route template, not raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label so scanners cannot blow up the label space.
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)


class DatabaseCollector(Collector):
    """Runs by status, the run queue, pending retrain triggers and notifications, read at scrape time."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        runs = GaugeMetricFamily("facefleet_runs", "Runs by status", labels=["status"])
        queue = GaugeMetricFamily("facefleet_run_queue_depth", "Runs waiting to start (status queued)")
        pending = GaugeMetricFamily("facefleet_pending_retrain_triggers", "Policies with a pending trigger")
        notes = GaugeMetricFamily("facefleet_pending_notifications", "Notifications not yet delivered")
        try:
            with self.session_factory() as session:
                counts = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
                pending_count = (
                    session.scalar(select(func.count()).where(RetrainPolicy.pending_trigger.is_not(None)))
                    or 0
                )
                notes_count = (
                    session.scalar(select(func.count()).where(Notification.status == "pending")) or 0
                )
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            log.warning("could not read run metrics from the database", exc_info=True)
            return []
        for status in sorted(set(RUN_STATUSES) | set(counts)):
            runs.add_metric([status], float(counts.get(status, 0)))
        queue.add_metric([], float(counts.get("queued", 0)))
        pending.add_metric([], float(pending_count))
        notes.add_metric([], float(notes_count))
        return [runs, queue, pending, notes]

"""Prometheus metrics of a Stepwise process, served at ``GET /metrics``.

The metric objects live in the default registry, created once per process, as
``prometheus_client`` intends; everything else records through the small functions
below, which cost a dictionary look-up and an addition.

* HTTP: every request, by method, route template and status, and its duration
  (``HttpMetrics``, an ASGI middleware installed by ``create_app``).
* Runs and steps: ``observe_events`` counts committed events (runs started, finished by
  status, paused; nodes completed, failed, retried); ``observe_step`` times one execution of
  a step; ``watch_executions`` makes the in-flight gauge read the runner pool's count.
* Workflows: ``workflow_stored``.
* Webhooks: ``webhook_attempt`` counts attempts by outcome.
"""

from __future__ import annotations

import collections
import functools
import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HttpMetrics",
    "exposition",
    "observe_events",
    "observe_step",
    "watch_executions",
    "webhook_attempt",
    "workflow_stored",
]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "stepwise_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "stepwise_http_request_duration_seconds",
    "Time to the first byte of the response, by method and route template.",
    ["method", "route"],
    buckets=_DURATION_BUCKETS,
)
RUNS_STARTED = Counter("stepwise_runs_started_total", "Runs that started executing.")
RUNS_FINISHED = Counter(
    "stepwise_runs_finished_total",
    "Runs that reached a terminal status (completed, failed, cancelled).",
    ["status"],
)
RUNS_PAUSED = Counter(
    "stepwise_runs_paused_total",
    "Times a run paused (interrupted, awaiting_input, suspended).",
    ["status"],
)
RUNS_RESUMED = Counter("stepwise_runs_resumed_total", "Times a paused run continued.")
STEPS = Counter(
    "stepwise_steps_total",
    "Node executions by outcome: succeeded, failed (for good) or retrying.",
    ["status"],
)
STEP_RESULTS = Counter(
    "stepwise_step_results_total",
    "Step executions by step type and StepResult status.",
    ["step", "status"],
)
STEP_DURATION = Histogram(
    "stepwise_step_duration_seconds",
    "Wall-clock time of one step execution (its retries included), by step type.",
    ["step"],
    buckets=_DURATION_BUCKETS,
)
HEAP_FROZEN = Gauge(
    "stepwise_heap_frozen_objects",
    "Objects this process moved out of the garbage collector's reach once it had started.",
)
HEAP_FROZEN.set_function(gc.get_freeze_count)
RUNS_IN_FLIGHT = Gauge(
    "stepwise_runs_in_flight", "Runs executing in this process's runner pool right now."
)
EVENTS = Counter("stepwise_events_total", "Run events committed, by type.", ["type"])
WORKFLOWS_STORED = Counter(
    "stepwise_workflows_stored_total", "Workflow versions stored (identical re-posts excluded)."
)
WEBHOOK_ATTEMPTS = Counter(
    "stepwise_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered, retrying (it failed and will be "
    "tried again) or failed (the last attempt failed; the delivery is given up).",
    ["outcome"],
)

_RUN_EVENTS: dict[str, Callable[[float], None]] = {
    "run.started": RUNS_STARTED.inc,
    "run.resumed": RUNS_RESUMED.inc,
    "run.completed": RUNS_FINISHED.labels("completed").inc,
    "run.failed": RUNS_FINISHED.labels("failed").inc,
    "run.cancelled": RUNS_FINISHED.labels("cancelled").inc,
    "run.interrupted": RUNS_PAUSED.labels("interrupted").inc,
    "run.awaiting_input": RUNS_PAUSED.labels("awaiting_input").inc,
    "run.suspended": RUNS_PAUSED.labels("suspended").inc,
    "node.completed": STEPS.labels("succeeded").inc,
    "node.failed": STEPS.labels("failed").inc,
    "node.retrying": STEPS.labels("retrying").inc,
}


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels`` takes a lock and builds its
    key on every call (a few percent of the server's CPU per step)."""
    return metric.labels(*labels)


def observe_events(types: Iterable[str]) -> None:
    """Count events that were just committed (call after the commit, with their types):
    one increment per type (a run's write holds dozens of events of a handful of types,
    and each increment takes a lock)."""
    for event_type, n in collections.Counter(types).items():
        _child(EVENTS, event_type).inc(n)
        count = _RUN_EVENTS.get(event_type)
        if count is not None:
            count(n)


def observe_step(step: str, status: str, duration_s: float) -> None:
    """One execution of a step's ``execute`` (with its retries) and the status it returned."""
    _child(STEP_RESULTS, step, status).inc()
    _child(STEP_DURATION, step).observe(duration_s)


def watch_executions(count: Callable[[], int]) -> None:
    """Make ``stepwise_runs_in_flight`` read ``count()`` at every scrape (the runner pool's
    number of active executions); there is one pool per process."""
    RUNS_IN_FLIGHT.set_function(count)


def webhook_attempt(outcome: str) -> None:
    _child(WEBHOOK_ATTEMPTS, outcome).inc()


def workflow_stored() -> None:
    WORKFLOWS_STORED.inc()


def exposition() -> bytes:
    return bytes(generate_latest())


class HttpMetrics:
    """ASGI middleware counting and timing HTTP requests by route template (not by raw
    path, so that ids do not make a label per request). Unmatched paths count as ``other``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _child(HTTP_DURATION, _method(scope), _route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _child(HTTP_REQUESTS, _method(scope), _route(scope), str(status)).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    method = scope["method"]
    return method if method in _METHODS else "other"


def _route(scope: dict[str, Any] | Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"

"""Clients of the Stepwise HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from stepwise.client import Client

    with Client("http://127.0.0.1:8000") as stepwise:
        stepwise.store_workflow({"name": "hello", "nodes": {"hi": {"step": "set"}}})
        run = stepwise.run_and_wait("hello", inputs={})
        for event in stepwise.stream_events(run.id):
            print(event.seq, event.type)

``base_url`` defaults to ``STEPWISE_URL`` (else ``http://127.0.0.1:8000``), ``api_key``
to ``STEPWISE_API_KEY``. Errors raise ``stepwise.errors.ApiError`` (with ``status``,
``code``, ``detail``, ``errors``) or ``CannotConnect``. Event streams resume by
themselves after a cut, with ``Last-Event-ID``: every event arrives exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from stepwise.async_client import AsyncClient
from stepwise.calls import (
    STREAM_READ_TIMEOUT_S,
    Call,
    Calls,
    T,
    auth_headers,
    base_url_from,
    nothing,
    run_body,
)
from stepwise.errors import (
    ApiError,
    CannotConnect,
    Conflict,
    InvalidRequest,
    NotFound,
    StepwiseError,
    Unauthorized,
    api_error,
    connect_reason,
)
from stepwise.models import (
    Checkpoint,
    CheckpointDetail,
    Event,
    Interrupt,
    Page,
    Run,
    ValidationResult,
    Workflow,
    WorkflowSummary,
)
from stepwise.sse import EventStream, SseParser, backoff_s

__all__ = [
    "ApiError",
    "AsyncClient",
    "CannotConnect",
    "Checkpoint",
    "CheckpointDetail",
    "Client",
    "Conflict",
    "Event",
    "Interrupt",
    "InvalidRequest",
    "NotFound",
    "Page",
    "Run",
    "StepwiseError",
    "Unauthorized",
    "ValidationResult",
    "Workflow",
    "WorkflowSummary",
]


class Client:
    """A blocking client. Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_reconnects: int = 5,
    ) -> None:
        self.base_url = base_url_from(base_url)
        self.max_reconnects = max_reconnects
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                content=call.content,
                headers=call.headers,
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise CannotConnect(self.base_url, connect_reason(exc)) from exc
        except httpx.TransportError as exc:
            raise StepwiseError(f"{call.method} {call.path}: {exc or type(exc).__name__}") from exc
        if response.is_error:
            raise api_error(response)
        return call.parse(response)

    # -- workflows ------------------------------------------------------------------------

    def store_workflow(self, definition: dict[str, Any] | str) -> Workflow:
        """Store a definition (a dict, or YAML text); the new or identical version."""
        return self._send(Calls.store_workflow(definition))

    def validate_workflow(self, definition: dict[str, Any] | str) -> ValidationResult:
        return self._send(Calls.validate_workflow(definition))

    def list_workflows(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[WorkflowSummary]:
        return self._send(Calls.list_workflows(cursor, limit))

    def get_workflow(self, name: str, version: int | None = None) -> Workflow:
        """The latest version, or the one named."""
        return self._send(Calls.get_workflow(name, version))

    def list_workflow_versions(
        self, name: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Workflow]:
        return self._send(Calls.list_workflow_versions(name, cursor, limit))

    # -- runs -----------------------------------------------------------------------------

    def start_run(
        self,
        workflow: str | None = None,
        *,
        definition: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        version: int | None = None,
        metadata: dict[str, Any] | None = None,
        start_at: str | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Start a run of a stored workflow (or of an inline ``definition``)."""
        body = run_body(workflow, definition, inputs, version, metadata, start_at, webhook)
        return self._send(Calls.start_run(body, idempotency_key, None, wait=False))

    def run_and_wait(
        self,
        workflow: str | None = None,
        *,
        definition: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        version: int | None = None,
        metadata: dict[str, Any] | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Run:
        """Start a run and wait until it completes, fails or pauses (or ``timeout_s``)."""
        body = run_body(workflow, definition, inputs, version, metadata, None, webhook)
        return self._send(Calls.start_run(body, idempotency_key, timeout_s, wait=True))

    def list_runs(
        self,
        *,
        status: str | list[str] | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Run]:
        """Newest first."""
        return self._send(Calls.list_runs(status, workflow, cursor, limit))

    def get_run(self, run_id: str) -> Run:
        return self._send(Calls.get_run(run_id))

    def wait_run(self, run_id: str, *, timeout_s: float | None = None) -> Run:
        """Wait until the run completes, fails or pauses (or ``timeout_s``)."""
        return self._send(Calls.wait_run(run_id, timeout_s))

    def delete_run(self, run_id: str) -> None:
        self._send(Calls.delete_run(run_id))

    def update_state(
        self, run_id: str, state_patch: dict[str, Any], *, goto: str | None = None
    ) -> Run:
        return self._send(Calls.update_state(run_id, state_patch, goto))

    def respond(
        self,
        run_id: str,
        interrupt_id: str,
        *,
        status: str = "approved",
        value: Any = None,
        comment: str | None = None,
        responded_by: str | None = None,
        wait_s: float | None = None,
    ) -> Run:
        """Answer a pending interrupt; with ``wait_s``, the run once it paused again or
        ended (waiting at most that long)."""
        return self._send(
            Calls.respond(run_id, interrupt_id, status, value, comment, responded_by, wait_s)
        )

    def send_message(self, run_id: str, message: Any, *, wait_s: float | None = None) -> Run:
        return self._send(Calls.send_message(run_id, message, wait_s))

    def resume(self, run_id: str, *, checkpoint_id: str | None = None) -> Run:
        return self._send(Calls.resume(run_id, checkpoint_id))

    def fork(
        self,
        run_id: str,
        checkpoint_id: str,
        *,
        state_patch: dict[str, Any] | None = None,
        inputs_patch: dict[str, Any] | None = None,
    ) -> Run:
        return self._send(Calls.fork(run_id, checkpoint_id, state_patch, inputs_patch))

    def cancel(self, run_id: str) -> Run:
        return self._send(Calls.cancel(run_id))

    def list_checkpoints(
        self, run_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Checkpoint]:
        return self._send(Calls.list_checkpoints(run_id, cursor, limit))

    def get_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointDetail:
        return self._send(Calls.get_checkpoint(run_id, checkpoint_id))

    def list_events(
        self,
        run_id: str,
        *,
        after: int | None = None,
        types: str | list[str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Event]:
        """A JSON page of stored events, by ``seq``."""
        return self._send(Calls.list_events(run_id, after, types, cursor, limit))

    def health(self) -> Any:
        return self._send(Calls.health())

    def ready(self) -> Any:
        return self._send(Calls.ready())

    def metrics(self) -> str:
        """The Prometheus metrics, as text."""
        return self._send(Calls.metrics())

    # -- streams --------------------------------------------------------------------------

    def stream_events(
        self,
        run_id: str,
        *,
        after: int | None = None,
        types: str | list[str] | None = None,
        until: str | None = None,
    ) -> Iterator[Event]:
        """The run's events, stored then live, until it ends (``until="paused"``: or
        pauses). A cut stream is resumed from the last event received."""
        stream = EventStream(run_id, after, types, until, self.max_reconnects)
        yield from self._follow(stream, None)

    def stream_run(
        self,
        workflow: str | None = None,
        *,
        definition: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        version: int | None = None,
        metadata: dict[str, Any] | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        types: str | list[str] | None = None,
        until: str | None = None,
    ) -> Iterator[Event]:
        """Start a run and stream its events (``POST /runs/stream``). The start carries an
        Idempotency-Key (a new one unless given), so a retry never starts a second run."""
        body = run_body(workflow, definition, inputs, version, metadata, None, webhook)
        key = idempotency_key or uuid.uuid4().hex
        stream = EventStream(None, None, types, until, self.max_reconnects)
        start = Call(
            "POST",
            "/runs/stream",
            nothing,
            json=body,
            params={"types": stream.types, "until": until},
            headers={"Accept": "text/event-stream", "Idempotency-Key": key},
        )
        yield from self._follow(stream, start)

    def _follow(self, stream: EventStream, start: Call[None] | None) -> Iterator[Event]:
        while True:
            call = stream.request(start)
            try:
                with self._http.stream(
                    call.method,
                    call.path,
                    params=call.params,
                    headers=call.headers,
                    json=call.json,
                    timeout=self._stream_timeout(),
                ) as response:
                    if response.is_error:
                        response.read()
                        raise api_error(response)
                    stream.run_id = stream.run_id or response.headers.get("X-Run-Id")
                    parser = SseParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None and event.seq > stream.last:
                            over = stream.take(event)
                            yield event
                            if over:
                                return
            except httpx.TransportError as exc:
                time.sleep(stream.failed(self.base_url, exc))
                continue
            if stream.got == 0 and stream.run_id is not None:
                if stream.settled(self.get_run(stream.run_id)):
                    return
                time.sleep(backoff_s(1))

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S)

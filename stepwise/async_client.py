"""The asyncio client: the same API as ``stepwise.client.Client``, every method awaited
(and the streams iterated with ``async for``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

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
from stepwise.errors import CannotConnect, StepwiseError, api_error, connect_reason
from stepwise.models import (
    Checkpoint,
    CheckpointDetail,
    Event,
    Page,
    Run,
    ValidationResult,
    Workflow,
    WorkflowSummary,
)
from stepwise.sse import EventStream, SseParser, backoff_s


class AsyncClient:
    """The same API for asyncio. Use it as an async context manager, or ``await aclose()``."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_reconnects: int = 5,
    ) -> None:
        self.base_url = base_url_from(base_url)
        self.max_reconnects = max_reconnects
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
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

    async def store_workflow(self, definition: dict[str, Any] | str) -> Workflow:
        return await self._send(Calls.store_workflow(definition))

    async def validate_workflow(self, definition: dict[str, Any] | str) -> ValidationResult:
        return await self._send(Calls.validate_workflow(definition))

    async def list_workflows(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[WorkflowSummary]:
        return await self._send(Calls.list_workflows(cursor, limit))

    async def get_workflow(self, name: str, version: int | None = None) -> Workflow:
        return await self._send(Calls.get_workflow(name, version))

    async def list_workflow_versions(
        self, name: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Workflow]:
        return await self._send(Calls.list_workflow_versions(name, cursor, limit))

    async def start_run(
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
        body = run_body(workflow, definition, inputs, version, metadata, start_at, webhook)
        return await self._send(Calls.start_run(body, idempotency_key, None, wait=False))

    async def run_and_wait(
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
        body = run_body(workflow, definition, inputs, version, metadata, None, webhook)
        return await self._send(Calls.start_run(body, idempotency_key, timeout_s, wait=True))

    async def list_runs(
        self,
        *,
        status: str | list[str] | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Run]:
        return await self._send(Calls.list_runs(status, workflow, cursor, limit))

    async def get_run(self, run_id: str) -> Run:
        return await self._send(Calls.get_run(run_id))

    async def wait_run(self, run_id: str, *, timeout_s: float | None = None) -> Run:
        return await self._send(Calls.wait_run(run_id, timeout_s))

    async def delete_run(self, run_id: str) -> None:
        await self._send(Calls.delete_run(run_id))

    async def update_state(
        self, run_id: str, state_patch: dict[str, Any], *, goto: str | None = None
    ) -> Run:
        return await self._send(Calls.update_state(run_id, state_patch, goto))

    async def respond(
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
        return await self._send(
            Calls.respond(run_id, interrupt_id, status, value, comment, responded_by, wait_s)
        )

    async def send_message(self, run_id: str, message: Any, *, wait_s: float | None = None) -> Run:
        return await self._send(Calls.send_message(run_id, message, wait_s))

    async def resume(self, run_id: str, *, checkpoint_id: str | None = None) -> Run:
        return await self._send(Calls.resume(run_id, checkpoint_id))

    async def fork(
        self,
        run_id: str,
        checkpoint_id: str,
        *,
        state_patch: dict[str, Any] | None = None,
        inputs_patch: dict[str, Any] | None = None,
    ) -> Run:
        return await self._send(Calls.fork(run_id, checkpoint_id, state_patch, inputs_patch))

    async def cancel(self, run_id: str) -> Run:
        return await self._send(Calls.cancel(run_id))

    async def list_checkpoints(
        self, run_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Checkpoint]:
        return await self._send(Calls.list_checkpoints(run_id, cursor, limit))

    async def get_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointDetail:
        return await self._send(Calls.get_checkpoint(run_id, checkpoint_id))

    async def list_events(
        self,
        run_id: str,
        *,
        after: int | None = None,
        types: str | list[str] | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Event]:
        return await self._send(Calls.list_events(run_id, after, types, cursor, limit))

    async def health(self) -> Any:
        return await self._send(Calls.health())

    async def ready(self) -> Any:
        return await self._send(Calls.ready())

    async def metrics(self) -> str:
        """The Prometheus metrics, as text."""
        return await self._send(Calls.metrics())

    async def stream_events(
        self,
        run_id: str,
        *,
        after: int | None = None,
        types: str | list[str] | None = None,
        until: str | None = None,
    ) -> AsyncIterator[Event]:
        stream = EventStream(run_id, after, types, until, self.max_reconnects)
        async for event in self._follow(stream, None):
            yield event

    async def stream_run(
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
    ) -> AsyncIterator[Event]:
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
        async for event in self._follow(stream, start):
            yield event

    async def _follow(self, stream: EventStream, start: Call[None] | None) -> AsyncIterator[Event]:
        while True:
            call = stream.request(start)
            try:
                async with self._http.stream(
                    call.method,
                    call.path,
                    params=call.params,
                    headers=call.headers,
                    json=call.json,
                    timeout=httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT_S),
                ) as response:
                    if response.is_error:
                        await response.aread()
                        raise api_error(response)
                    stream.run_id = stream.run_id or response.headers.get("X-Run-Id")
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None and event.seq > stream.last:
                            over = stream.take(event)
                            yield event
                            if over:
                                return
            except httpx.TransportError as exc:
                await asyncio.sleep(stream.failed(self.base_url, exc))
                continue
            if stream.got == 0 and stream.run_id is not None:
                if stream.settled(await self.get_run(stream.run_id)):
                    return
                await asyncio.sleep(backoff_s(1))

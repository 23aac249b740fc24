"""The request of every endpoint (DESIGN §4), built once and sent by either client."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

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

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")
# how long past a /wait endpoint's own timeout the client waits for its answer
WAIT_MARGIN_S = 30.0
SERVER_WAIT_DEFAULT_S = 30.0


class Call(Generic[T]):
    """One request and how to read its answer: built once, sent by either client."""

    def __init__(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.parse = parse
        self.params = {k: v for k, v in (params or {}).items() if v is not None}
        self.json = json
        self.content = content
        self.headers = headers or {}
        self.timeout = timeout


def _model(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], T]:
    return lambda response: adapter.validate_python(response.json())


RUN = _model(TypeAdapter(Run))
WORKFLOW = _model(TypeAdapter(Workflow))
RUN_PAGE = _model(TypeAdapter(Page[Run]))
EVENT_PAGE = _model(TypeAdapter(Page[Event]))
CHECKPOINT_PAGE = _model(TypeAdapter(Page[Checkpoint]))
CHECKPOINT = _model(TypeAdapter(CheckpointDetail))
WORKFLOW_PAGE = _model(TypeAdapter(Page[WorkflowSummary]))
VERSION_PAGE = _model(TypeAdapter(Page[Workflow]))
VALIDATION = _model(TypeAdapter(ValidationResult))


def _json(response: httpx.Response) -> Any:
    return response.json()


def _text(response: httpx.Response) -> str:
    return response.text


def nothing(response: httpx.Response) -> None:
    return None


def _definition_body(definition: dict[str, Any] | str) -> dict[str, Any]:
    """A definition as a dict is sent as JSON; as a string, as YAML."""
    if isinstance(definition, str):
        return {
            "content": definition.encode(),
            "headers": {"Content-Type": "application/yaml"},
        }
    return {"json": definition}


def run_body(
    workflow: str | None,
    definition: dict[str, Any] | None,
    inputs: dict[str, Any] | None,
    version: int | None,
    metadata: dict[str, Any] | None,
    start_at: str | None,
    webhook: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": inputs or {}}
    for key, value in (
        ("workflow", workflow),
        ("definition", definition),
        ("version", version),
        ("metadata", metadata),
        ("start_at", start_at),
        ("webhook", webhook),
    ):
        if value is not None:
            body[key] = value
    return body


def _waiting(wait_s: float | None) -> dict[str, Any]:
    """An answer's ``?wait_s=`` and a read timeout that outlasts it (none: answer at once)."""
    if wait_s is None:
        return {}
    return {"params": {"wait_s": wait_s}, "timeout": _wait_timeout(wait_s)}


def _wait_timeout(timeout_s: float | None) -> float:
    return (SERVER_WAIT_DEFAULT_S if timeout_s is None else timeout_s) + WAIT_MARGIN_S


def types_param(types: str | list[str] | None) -> str | None:
    return ",".join(types) if isinstance(types, list) else types


class Calls:
    """The requests of every endpoint (DESIGN §4)."""

    @staticmethod
    def store_workflow(definition: dict[str, Any] | str) -> Call[Workflow]:
        return Call("POST", "/workflows", WORKFLOW, **_definition_body(definition))

    @staticmethod
    def validate_workflow(definition: dict[str, Any] | str) -> Call[ValidationResult]:
        return Call("POST", "/workflows/validate", VALIDATION, **_definition_body(definition))

    @staticmethod
    def list_workflows(cursor: str | None, limit: int | None) -> Call[Page[WorkflowSummary]]:
        return Call("GET", "/workflows", WORKFLOW_PAGE, params={"cursor": cursor, "limit": limit})

    @staticmethod
    def get_workflow(name: str, version: int | None) -> Call[Workflow]:
        path = f"/workflows/{name}" + (f"/versions/{version}" if version is not None else "")
        return Call("GET", path, WORKFLOW)

    @staticmethod
    def list_workflow_versions(
        name: str, cursor: str | None, limit: int | None
    ) -> Call[Page[Workflow]]:
        return Call(
            "GET",
            f"/workflows/{name}/versions",
            VERSION_PAGE,
            params={"cursor": cursor, "limit": limit},
        )

    @staticmethod
    def start_run(
        body: dict[str, Any], idempotency_key: str | None, wait_s: float | None, wait: bool
    ) -> Call[Run]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        if not wait:
            return Call("POST", "/runs", RUN, json=body, headers=headers)
        return Call(
            "POST",
            "/runs/wait",
            RUN,
            json=body,
            headers=headers,
            params={"timeout_s": wait_s},
            timeout=_wait_timeout(wait_s),
        )

    @staticmethod
    def list_runs(
        status: str | list[str] | None,
        workflow: str | None,
        cursor: str | None,
        limit: int | None,
    ) -> Call[Page[Run]]:
        statuses = ",".join(status) if isinstance(status, list) else status
        params = {"status": statuses, "workflow": workflow, "cursor": cursor, "limit": limit}
        return Call("GET", "/runs", RUN_PAGE, params=params)

    @staticmethod
    def get_run(run_id: str) -> Call[Run]:
        return Call("GET", f"/runs/{run_id}", RUN)

    @staticmethod
    def wait_run(run_id: str, timeout_s: float | None) -> Call[Run]:
        return Call(
            "GET",
            f"/runs/{run_id}/wait",
            RUN,
            params={"timeout_s": timeout_s},
            timeout=_wait_timeout(timeout_s),
        )

    @staticmethod
    def delete_run(run_id: str) -> Call[None]:
        return Call("DELETE", f"/runs/{run_id}", nothing)

    @staticmethod
    def update_state(run_id: str, state_patch: dict[str, Any], goto: str | None) -> Call[Run]:
        body: dict[str, Any] = {"state_patch": state_patch}
        if goto is not None:
            body["goto"] = goto
        return Call("POST", f"/runs/{run_id}/state", RUN, json=body)

    @staticmethod
    def respond(
        run_id: str,
        interrupt_id: str,
        status: str,
        value: Any,
        comment: str | None,
        responded_by: str | None,
        wait_s: float | None = None,
    ) -> Call[Run]:
        body: dict[str, Any] = {"interrupt_id": interrupt_id, "status": status, "value": value}
        if comment is not None:
            body["comment"] = comment
        if responded_by is not None:
            body["responded_by"] = responded_by
        return Call("POST", f"/runs/{run_id}/response", RUN, json=body, **_waiting(wait_s))

    @staticmethod
    def send_message(run_id: str, message: Any, wait_s: float | None = None) -> Call[Run]:
        return Call(
            "POST", f"/runs/{run_id}/messages", RUN, json={"message": message}, **_waiting(wait_s)
        )

    @staticmethod
    def resume(run_id: str, checkpoint_id: str | None) -> Call[Run]:
        body = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
        return Call("POST", f"/runs/{run_id}/resume", RUN, json=body)

    @staticmethod
    def fork(
        run_id: str,
        checkpoint_id: str,
        state_patch: dict[str, Any] | None,
        inputs_patch: dict[str, Any] | None,
    ) -> Call[Run]:
        body: dict[str, Any] = {"checkpoint_id": checkpoint_id}
        if state_patch is not None:
            body["state_patch"] = state_patch
        if inputs_patch is not None:
            body["inputs_patch"] = inputs_patch
        return Call("POST", f"/runs/{run_id}/fork", RUN, json=body)

    @staticmethod
    def cancel(run_id: str) -> Call[Run]:
        return Call("POST", f"/runs/{run_id}/cancel", RUN)

    @staticmethod
    def list_checkpoints(
        run_id: str, cursor: str | None, limit: int | None
    ) -> Call[Page[Checkpoint]]:
        return Call(
            "GET",
            f"/runs/{run_id}/checkpoints",
            CHECKPOINT_PAGE,
            params={"cursor": cursor, "limit": limit},
        )

    @staticmethod
    def get_checkpoint(run_id: str, checkpoint_id: str) -> Call[CheckpointDetail]:
        return Call("GET", f"/runs/{run_id}/checkpoints/{checkpoint_id}", CHECKPOINT)

    @staticmethod
    def list_events(
        run_id: str,
        after: int | None,
        types: str | list[str] | None,
        cursor: str | None,
        limit: int | None,
    ) -> Call[Page[Event]]:
        params = {"after": after, "types": types_param(types), "cursor": cursor, "limit": limit}
        return Call(
            "GET",
            f"/runs/{run_id}/events",
            EVENT_PAGE,
            params=params,
            headers={"Accept": "application/json"},
        )

    @staticmethod
    def health() -> Call[Any]:
        return Call("GET", "/healthz", _json)

    @staticmethod
    def ready() -> Call[Any]:
        return Call("GET", "/readyz", _json)

    @staticmethod
    def metrics() -> Call[str]:
        return Call("GET", "/metrics", _text)


def base_url_from(base_url: str | None) -> str:
    return (base_url or os.environ.get("STEPWISE_URL") or DEFAULT_URL).rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("STEPWISE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


STREAM_READ_TIMEOUT_S = 60.0  # keep-alives come every 15 s; silence this long is a cut

"""What the engine needs from the outside world, built once by the app's lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, quote_plus

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.engine import prompts
from app.engine.memory import Handover
from app.engine.templates import TemplateEngine
from app.engine.templates.secrets import SecretValues
from app.engine.validation import DefinitionLimits, DefinitionValidator
from app.errors import NotFound
from app.schemas.definition import WorkflowDefinition
from app.settings import Settings
from app.steps.clients import OutboundClient
from app.steps.destinations import OutboundPolicy
from app.steps.registry import StepRegistry
from app.store import agent_turns as agent_turn_store
from app.store import workflows as workflow_store
from app.store.database import Executor, write_transaction
from app.store.models import Run

if TYPE_CHECKING:
    from app.agents.clients import ModelClients

SECRET_PREFIX = "STEPWISE_SECRET_"
REDACTED = "***"


def load_secrets(settings: Settings, environ: Mapping[str, str] = os.environ) -> SecretValues:
    """``STEPWISE_SECRET_<NAME>`` variables, then ``NAME=value`` lines of the secrets file."""
    secrets = SecretValues(
        (k[len(SECRET_PREFIX) :], v)
        for k, v in environ.items()
        if k.startswith(SECRET_PREFIX) and v
    )
    if settings.secrets_file:
        for line in Path(settings.secrets_file).read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() and not name.lstrip().startswith("#") and value:
                secrets.setdefault(name.strip(), value.strip())
    return secrets


class Redactor:
    """Replaces every secret value inside strings of a JSON value, and in log records.

    A redactor with secrets also redacts every log record made while it is alive (see
    :func:`_redact_log_records`): libraries log what they send and receive (httpx the
    URL with its query, httpcore the response headers at DEBUG), and a step's exception
    may quote what it was given.
    """

    def __init__(self, secrets: Mapping[str, str], *, logs: bool = True) -> None:
        forms = {form for value in secrets.values() if value for form in _encoded_forms(value)}
        # longest first, so a secret containing another is redacted whole
        self._values = sorted(forms, key=len, reverse=True)
        if logs and self._values:
            _redact_log_records(self)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, value: str) -> str:
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def json(self, value: Any) -> Any:
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value

    def log_record(self, record: logging.LogRecord) -> None:
        """Redact a record in place: its message, its traceback and its stack."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it when it is emitted
            return
        redacted = self.text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            redacted = self.text(trace)
            if redacted != trace:
                # formatters print exc_text; the exception itself would show the value
                record.exc_text, record.exc_info = redacted, None
        if record.stack_info:
            record.stack_info = self.text(record.stack_info)


def _encoded_forms(value: str) -> set[str]:
    """A secret as written, and as it shows once percent-encoded in a URL (by httpx, by
    Jinja's ``urlencode``, as a form field) or escaped in JSON text: an echo of a request
    carries the encoded form."""
    forms = {
        value,
        quote(value, safe=""),
        quote(value, safe="/"),
        quote(value, safe="!$&'()*+,;=:@/?"),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    return {form for form in forms if form}


# Redactors with secrets, alive in this process (an app's engine holds its redactor).
_log_redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()


def _redact_log_records(redactor: Redactor) -> None:
    """Have every log record made from now on pass through ``redactor``.

    The process's log record factory is wrapped once; it asks every live redactor, so
    several apps in one process (tests) each keep their own secrets out of the log.
    """
    if not _log_redactors:
        factory = logging.getLogRecordFactory()
        if not getattr(factory, "stepwise_redacting", False):
            logging.setLogRecordFactory(_redacting_factory(factory))
    _log_redactors.add(redactor)


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        for redactor in list(_log_redactors):
            redactor.log_record(record)
        return record

    factory.stepwise_redacting = True  # type: ignore[attr-defined]
    return factory


class DefinitionCache:
    """Parsed definitions by content hash: a definition is validated once per process.

    It also remembers which hash a stored workflow's name (and version) led to last. A
    pinned version never changes (stored versions are never rewritten or deleted); the
    latest one does, so ``known`` gives it only to a caller that makes its write check
    that no newer version was stored since (``insert_new_run``'s ``unless_newer``)."""

    def __init__(self, validator: DefinitionValidator) -> None:
        self._validator = validator
        self._by_hash: dict[str, WorkflowDefinition] = {}
        self._refs: dict[tuple[str, int | None], tuple[int, str]] = {}

    def parse(self, digest: str, raw: dict[str, Any]) -> WorkflowDefinition:
        found = self._by_hash.get(digest)
        if found is None:
            found = self._validator.parse(raw)
            if len(self._by_hash) > 10_000:
                self._by_hash.clear()
            self._by_hash[digest] = found
        return found

    async def for_run(self, session: AsyncSession, run: Run) -> WorkflowDefinition:
        found = self._by_hash.get(run.definition_hash)
        if found is not None:
            return found
        if run.inline_definition is not None:
            return self.parse(run.definition_hash, run.inline_definition)
        raw = await workflow_store.definition_by_hash(session, run.definition_hash)
        if raw is None:
            raise NotFound(f"the definition of run {run.id} is gone", code="workflow_not_found")
        return self.parse(run.definition_hash, raw)

    async def stored(
        self, session: Executor, name: str, version: int | None
    ) -> tuple[WorkflowDefinition, int, str]:
        """A stored workflow (latest version unless pinned): definition, version, hash.
        Its definition is read only the first time this process meets its hash."""
        ref = await workflow_store.find_ref(session, name, version)
        if ref is None:
            which = f"{name!r}" if version is None else f"{name!r} version {version}"
            raise NotFound(f"workflow {which} not found", code="workflow_not_found")
        found_version, digest = ref
        found = self._by_hash.get(digest)
        if found is None:
            raw = await workflow_store.definition_by_hash(session, digest)
            if raw is None:  # deleted in between
                raise NotFound(f"workflow {name!r} not found", code="workflow_not_found")
            found = self.parse(digest, raw)
        if len(self._refs) > 10_000:
            self._refs.clear()
        self._refs[(name, version)] = ref
        return found, found_version, digest

    def known(self, name: str, version: int | None) -> tuple[WorkflowDefinition, int, str] | None:
        """``stored``'s answer as this process last read it, without a read: exact for a
        pinned version, possibly outdated for the latest (see the class)."""
        ref = self._refs.get((name, version))
        if ref is None:
            return None
        found = self._by_hash.get(ref[1])
        return None if found is None else (found, *ref)

    def forget_latest(self, name: str) -> None:
        """A newer version of ``name`` was stored (or is known to be)."""
        self._refs.pop((name, None), None)


class EventsHook(Protocol):
    """Called after a commit that appended events: the run's last seq and status, and,
    when a runner of this process just settled the run (paused or ended it), how to build
    the run's resource as committed (waiters of this process answer with it: no read)."""

    def __call__(
        self, run_id: str, seq: int, status: str, resource: Callable[[], bytes] | None = None
    ) -> None: ...


def _no_events(
    run_id: str, seq: int, status: str, resource: Callable[[], bytes] | None = None
) -> None:
    pass


@dataclass(slots=True)
class Engine:
    """Everything a runner and the API's run commands share."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    templates: TemplateEngine
    registry: StepRegistry
    validator: DefinitionValidator
    definitions: DefinitionCache
    http: OutboundClient
    outbound_policy: OutboundPolicy
    model_clients: ModelClients  # agent steps' model clients, kept across steps and runs
    secrets: SecretValues
    redactor: Redactor
    on_events: EventsHook = _no_events
    # called after a runner's commit with the event rows it wrote: (run_id, rows, status)
    on_committed: Callable[[str, list[dict[str, Any]], str], None] = field(
        default=lambda run_id, rows, status: None
    )
    # called after a commit that made a run claimable
    on_work: Callable[[], None] = field(default=lambda: None)
    # called after a commit that cancelled a run, to stop it where it executes
    on_cancel: Callable[[str], None] = field(default=lambda run_id: None)
    # whether this process can execute a new run at once, and handing it over after commit
    # (with the lease token when the run was reserved for this process's runner pool)
    can_adopt: Callable[[], bool] = field(default=lambda: False)
    adopt: Callable[[str, Handover | None, int | None], bool] = field(
        default=lambda run_id, handover, token: False
    )
    runner_owner: str | None = None  # this process's runner pool, if it has one
    # called after a commit that paused or ended a run that has a webhook (the commit
    # wrote the delivery it owes: ``app.engine.webhooks``)
    on_settled: Callable[[], None] = field(default=lambda: None)
    # runs whose parallel branches are being executed here, each with the event that
    # tells its execution that answers to paused branches wait in its row
    answer_signals: dict[str, asyncio.Event] = field(default_factory=dict)

    def signal_answer(self, run_id: str) -> None:
        """Answers to paused branches of ``run_id`` were committed (here or elsewhere)."""
        signal = self.answer_signals.get(run_id)
        if signal is not None:
            signal.set()

    # -- for agent steps (DESIGN §9): stored prompts and the loop's journal -----------------

    async def resolve_prompt(self, ref: str, run_id: str) -> prompts.ResolvedPrompt:
        return await prompts.resolve_prompt(self.sessions, ref, run_id)

    # perf (issue 17): Core transactions, without an ORM session's upkeep
    async def agent_turns(
        self, run_id: str, node: str, visit: int, *, start: Any = None
    ) -> list[dict[str, Any]]:
        """The visit's journal; with ``start``, an empty one gets it as its first entry
        in the same transaction."""
        async with write_transaction(self.sessions) as connection:
            turns = await agent_turn_store.load(connection, run_id, node, visit)
            if turns or start is None:
                return turns
            await agent_turn_store.record(connection, run_id, node, visit, 0, "start", start)
        return [{"seq": 0, "kind": "start", "data": start}]

    async def record_agent_turn(
        self, run_id: str, node: str, visit: int, seq: int, kind: str, data: Any
    ) -> None:
        async with write_transaction(self.sessions) as connection:
            await agent_turn_store.record(connection, run_id, node, visit, seq, kind, data)

    @classmethod
    def build(
        cls,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        http: OutboundClient,
        model_clients: ModelClients,
        registry: StepRegistry | None = None,
    ) -> Engine:
        templates = TemplateEngine(
            max_output_bytes=settings.template_max_output_bytes,
            timeout_s=settings.template_timeout_s,
        )
        registry = registry or StepRegistry.load()
        validator = DefinitionValidator(
            registry, templates, DefinitionLimits(settings.max_definition_bytes, settings.max_nodes)
        )
        secrets = load_secrets(settings)
        return cls(
            settings=settings,
            sessions=sessions,
            templates=templates,
            registry=registry,
            validator=validator,
            definitions=DefinitionCache(validator),
            http=http,
            model_clients=model_clients,
            outbound_policy=OutboundPolicy(
                allow_private_networks=settings.allow_private_networks,
                allowed_hosts=frozenset(settings.http_allowed_hosts),
                max_response_bytes=settings.http_max_response_bytes,
            ),
            secrets=secrets,
            redactor=Redactor(secrets),
        )

"""Starting runs: the definition and inputs checked, the run stored with its first
checkpoint and events in one write, and handed to a runner of this process when one
is free (``POST /runs``, ``Idempotency-Key`` honoured)."""

from __future__ import annotations

import hashlib
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.engine import memory
from app.engine.prompts import prompt_ref_errors
from app.engine.queueing import CommandBase
from app.engine.schema_checks import instance_errors
from app.engine.templates import TemplateError
from app.engine.validation import canonical_json, definition_hash
from app.errors import Conflict, Invalid, error_item
from app.schemas.definition import WorkflowDefinition
from app.schemas.runs import RunCreate
from app.steps.destinations import AddressNotAllowed, check_without_lookup, parse_url
from app.store import checkpoints as checkpoint_store
from app.store import runs as run_store
from app.store.checkpoints import CheckpointRow
from app.store.database import Executor, lone_statement, transaction
from app.store.events import NewEvent, insert_events
from app.store.ids import new_id
from app.store.models import Run, detached, utcnow
from app.store.statements import insert_new_run


@dataclass(frozen=True, slots=True)
class Started:
    run: Run
    created: bool
    state: Any = None  # the initial state of a run just created (no read-back needed)


def _prompt_refs(definition: WorkflowDefinition) -> dict[str, Any]:
    """The prompt references of a definition, in the shape of a raw document (empty: none)."""
    agents = {
        agent_id: {"system_prompt_ref": agent.system_prompt_ref}
        for agent_id, agent in definition.agent_map.items()
        if agent.system_prompt_ref is not None
    }
    nodes = {
        node_id: {"with": {"prompt_ref": node.with_["prompt_ref"]}}
        for node_id, node in definition.nodes.items()
        if node.with_.get("prompt_ref") is not None
    }
    return {"agents": agents, "nodes": nodes} if agents or nodes else {}


class _OutdatedLatest(Exception):
    """A start took a workflow's latest version from memory, and a newer one is stored:
    its insert wrote nothing."""


class StartCommands(CommandBase):
    """``POST /runs``: a run checked, stored with its first checkpoint, and handed to a runner
    of this process when one is free."""

    async def _definition(
        self, session: Executor, body: RunCreate, *, remembered: bool
    ) -> tuple[WorkflowDefinition, str, int | None, str, dict[str, Any] | None]:
        """The run's definition, name, version, hash and inline definition. With
        ``remembered``, a stored workflow this process has met is taken from memory: the
        caller's insert must then check that its version is still the latest
        (``insert_new_run``'s ``unless_newer``) unless the body pins the version."""
        if body.definition is not None:
            raw = {"name": "inline", **body.definition}
            definition, errors = self.engine.validator.validate(raw)
            errors += await prompt_ref_errors(session, raw)
            if definition is None or errors:
                errors = [{**e, "loc": ["body", "definition", *e["loc"]]} for e in errors]
                raise Invalid(
                    "the inline definition is invalid", code="invalid_definition", errors=errors
                )
            return definition, definition.name, None, definition_hash(raw), raw
        assert body.workflow is not None
        known = self.engine.definitions.known(body.workflow, body.version) if remembered else None
        definition, version, digest = known or await self.engine.definitions.stored(
            session, body.workflow, body.version
        )
        refs = _prompt_refs(definition)
        if refs:  # stored before its prompts were: a run needs them
            errors = await prompt_ref_errors(session, refs)
            if errors:
                raise Invalid(
                    f"workflow {body.workflow!r} names prompts that are not stored",
                    code="unknown_prompt",
                    errors=errors,
                )
        return definition, body.workflow, version, digest, None

    async def start(self, body: RunCreate, idempotency_key: str | None) -> Started:
        request_hash = hashlib.sha256(
            canonical_json(body.model_dump(mode="json")).encode()
        ).hexdigest()
        if idempotency_key is not None:
            async with transaction(self.engine.sessions) as session:
                existing = await run_store.get_by_idempotency_key(session, idempotency_key)
            if existing is not None:
                return self._replay(existing, request_hash)
        # a run due now that this process can execute at once is reserved for it
        lease = self._reservation(1) if body.start_at is None else {}
        try:
            async with self._start_scope() as executor:
                try:
                    handover = await self._insert(
                        executor, body, idempotency_key, request_hash, lease, remembered=True
                    )
                except _OutdatedLatest:  # nothing was written: again, reading the latest
                    assert body.workflow is not None
                    self.engine.definitions.forget_latest(body.workflow)
                    handover = await self._insert(
                        executor, body, idempotency_key, request_hash, lease, remembered=False
                    )
        except IntegrityError:
            if idempotency_key is None:
                raise
            async with transaction(self.engine.sessions) as session:
                existing = await run_store.get_by_idempotency_key(session, idempotency_key)
            if existing is None:
                raise
            return self._replay(existing, request_hash)
        self._after_commit(handover.run, work=True, handover=handover)
        return Started(handover.run, True, handover.doc["frames"][0]["state"])

    def _start_scope(self) -> AbstractAsyncContextManager[Executor]:
        """Where a run starts: on Postgres a connection with no transaction (the run's
        one-statement write commits by itself: one round trip once the workflow is known
        here, see ``_definition``), on SQLite a transaction."""
        if self.engine.settings.is_sqlite:
            return transaction(self.engine.sessions)
        return lone_statement(self.engine.sessions)

    def _replay(self, existing: Run, request_hash: str) -> Started:
        if existing.request_hash != request_hash:
            raise Conflict(
                "this Idempotency-Key was used with another request body",
                code="idempotency_key_reused",
            )
        return Started(existing, False)

    async def _insert(
        self,
        session: Executor,
        body: RunCreate,
        key: str | None,
        request_hash: str,
        lease: dict[str, Any],
        *,
        remembered: bool,
    ) -> memory.Handover:
        # from memory only where the insert can check the version (Postgres: one statement)
        remembered = remembered and isinstance(session, AsyncConnection)
        definition, name, version, digest, inline = await self._definition(
            session, body, remembered=remembered
        )
        if definition.inputs is not None:
            errors = instance_errors(definition.inputs, body.inputs, ["body", "inputs"])
            if errors:
                raise Invalid(
                    "the inputs do not match the workflow's input schema",
                    code="invalid_inputs",
                    errors=errors,
                )
        if body.webhook is not None:
            self._check_webhook(body.webhook)
        try:
            frame = memory.new_frame(definition, body.inputs, self.engine.templates)
        except TemplateError as exc:
            raise Invalid(
                f"the initial state does not render: {exc.message}",
                code="invalid_inputs",
                errors=[error_item(["body", "inputs"], exc.message)],
            ) from None
        self._check_state_size(frame["state"], ["body", "inputs"], "the initial state")
        now = utcnow()
        run_id = new_id()
        checkpoint_id = new_id()
        doc = memory.new_document(frame)
        events = [
            NewEvent("run.queued", None, {"workflow": {"name": name, "version": version}}),
            NewEvent("checkpoint.saved", frame["node"], {"checkpoint_id": checkpoint_id, "seq": 1}),
        ]
        values = {
            "id": run_id,
            "workflow_name": name,
            "workflow_version": version,
            "definition_hash": digest,
            "inline_definition": inline,
            "status": "queued",
            "inputs": body.inputs,
            "meta": body.metadata,
            "current_node": frame["node"],
            "due_at": body.start_at,
            "step_count": 0,
            "attempt": 0,
            "head_checkpoint_id": checkpoint_id,
            "event_seq": len(events),
            "checkpoint_seq": 1,
            **(lease or {"lease_token": 0}),
            "idempotency_key": key,
            "request_hash": request_hash,
            "webhook": body.webhook,
            "created_at": now,
            "updated_at": now,
        }
        row = CheckpointRow(checkpoint_id, run_id, None, 1, None, frame["node"], "queued", 0, now)
        if isinstance(session, AsyncConnection):  # Postgres (``_start_scope``)
            latest = remembered and inline is None and body.version is None
            unless_newer = (name, version) if latest and version is not None else None
            if not await insert_new_run(
                session, values, row, doc, events, notify_work=not lease, unless_newer=unless_newer
            ):
                raise _OutdatedLatest
            run = detached(Run, values)
        else:
            run = await run_store.insert_run(session, values)
            await checkpoint_store.insert_checkpoint(session, row, None, doc)
            await insert_events(session, run_id, len(events), events, now, groups=[len(events)])
            if not lease:
                await run_store.notify(session, "stepwise_work", run_id)
        chain = checkpoint_store.CheckpointChain.snapshot(checkpoint_id, doc)
        return memory.Handover(run, checkpoint_id, doc, [definition], chain)

    def _check_webhook(self, url: str) -> None:
        """422 for a webhook the outbound guard refuses whatever it resolves to (its
        scheme, an address or ``localhost`` it may not reach): it could never be
        delivered. A name is checked when a delivery resolves it."""
        try:
            check_without_lookup(parse_url(url), self.engine.outbound_policy)
        except (AddressNotAllowed, httpx.InvalidURL) as exc:
            msg = f"the webhook cannot be delivered: {exc}"
            raise Invalid(
                msg, code="invalid_webhook", errors=[error_item(["body", "webhook"], str(exc))]
            ) from None

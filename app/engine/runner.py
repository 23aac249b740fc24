"""The runner cycle (DESIGN §1): one claimed run, executed until it pauses or ends.

    pick node → resolve inputs → execute step → handle StepResult → choose edge → checkpoint

Each step's checkpoint and events are written in one fenced transaction, or with the
pure steps before it (``app.engine.recording``); a runner that lost its lease gets
``LeaseLost`` and drops the run.

Pauses, subgraph frames and handoffs are all state in the run's document
(``app.engine.memory``), so any worker can pick the run up where it stopped.

The cycle is one class in one module, longer than most here, on purpose: the handling
of each StepResult status reads and advances the same run memory, and reads best beside
the others; the write side is ``app.engine.recording``, parallel branches
``app.engine.branches``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from app import metrics
from app.engine import branchdoc, memory
from app.engine.edges import choose_next
from app.engine.lifecycle import RunStatus
from app.engine.recording import LeaseLost, RunRecorder
from app.engine.services import Engine
from app.engine.stepexec import execute_with_retry
from app.engine.subgraphs import SubgraphFrames
from app.engine.templates import TemplateError
from app.schemas.definition import Node
from app.steps.base import StepContext, StepError, StepResult, StepStatus
from app.store import checkpoints as checkpoint_store
from app.store import events as event_store
from app.store import runs as run_store
from app.store.checkpoints import CheckpointChain
from app.store.database import encode_json, transaction
from app.store.events import NewEvent
from app.store.models import Run, rfc3339, utcnow

log = logging.getLogger(__name__)

MAX_EVENT_OUTPUT_BYTES = 16 * 1024
PAUSE_STATUSES = ("interrupted", "awaiting_input", "suspended", "failed")


def _error(code: str, message: str, **details: Any) -> StepError:
    return StepError(code, message, details=details or None)


class RunExecution(RunRecorder):
    # the workflows this execution runs inside (a map item's, a branch's: its parents'
    # frames); with its own frames, what STEPWISE_MAX_SUBGRAPH_DEPTH bounds
    nesting = 0

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        lease: run_store.Lease,
        handover: memory.Handover | None = None,
    ) -> None:
        super().__init__(engine, run_id, lease)
        self.handover = handover
        self.lease = lease
        self.inject: dict[str, Any] = {}
        self.at_node: str | None = None  # the node being run (for errors raised outside it)
        self.stopping: Callable[[], bool] = lambda: False  # parallel branches ask it too

    async def execute(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Run until the run pauses or ends, or ``stop()`` says so at a step boundary
        (a draining process), the run then staying claimable from its checkpoint."""
        self.stopping = stop
        try:
            if await self._load():
                if self.recoveries >= self.engine.settings.max_recoveries:
                    await self._recovery_limit()
                    return
                after = memory.pending_after(self.doc)
                if after is not None:
                    await self._ask_again(after)
                    return
                while await self._step() and not stop():
                    pass
                await self._flush()  # stopped at a step boundary: staged steps are kept
        except LeaseLost:
            log.info("run %s: lease lost, dropping it", self.run_id)

    # -- loading and resuming ------------------------------------------------------------

    async def _load(self) -> bool:
        if self.handover is not None:
            return self._take_over(self.handover)
        async with transaction(self.engine.sessions) as session:
            run = await run_store.get(session, self.run_id)
            held = run is not None and run.status in run_store.HELD
            if run is None or not held or run.lease_token != self.lease.token:
                return False
            assert run.head_checkpoint_id is not None
            loaded = await checkpoint_store.load(session, run.head_checkpoint_id)
            assert loaded is not None
            checkpoint, doc, chain = loaded
            self.chain: CheckpointChain = chain
            self.frames = await SubgraphFrames.load(self.engine, session, run, doc)
            # a worker may have died after writing run.started but before a checkpoint
            started = checkpoint.status == "queued" and await event_store.has_event(
                session, run.id, "run.started"
            )
        self._start(run, checkpoint.id, doc)
        self._resume("running" if started else checkpoint.status, run.resume_data or {})
        return True

    def _start(self, run: Run, head_id: str, doc: memory.Doc) -> None:
        self.inputs = run.inputs
        self.webhook = run.webhook
        self.head_id = head_id
        self.step_count = run.step_count
        self.attempt = run.attempt
        self.recoveries = run.recoveries or 0
        self.max_steps = min(
            self.frames.top.max_steps or self.engine.settings.max_steps,
            self.engine.settings.max_steps,
        )
        self.doc = doc

    def _take_over(self, handover: memory.Handover) -> bool:
        self.chain = handover.chain
        self.frames = SubgraphFrames(self.engine, list(handover.definitions))
        self._start(handover.run, handover.checkpoint_id, handover.doc)
        self._resume(handover.stopped, handover.run.resume_data or {})
        return True

    def _resume(self, status: str, resume: dict[str, Any]) -> None:
        """Turn how the run last stopped, and what the API left for it, into context."""
        if "usage" in resume:  # time travel: the usage of the timeline left
            self.doc = {**self.doc, "usage": resume["usage"]}
        if status == "queued":
            self.events.append(NewEvent("run.started", None, {}))
            return
        if status not in PAUSE_STATUSES and not resume:
            return  # a lapsed lease or a released run: carry on
        self.events.append(
            NewEvent(
                "run.resumed",
                None,
                {"from": resume.get("from", status), **resume.get("info", {})},
            )
        )
        if branchdoc.section_index(self.doc) is not None:  # for a branch: it takes it
            from app.engine import branchanswers

            self.doc = branchanswers.route_resume(self.doc, status, resume)
            return
        if "response" in resume:
            interrupt = self.doc.get("interrupt") or resume.get("interrupt") or {}
            kind = interrupt.get("kind")
            self.doc = {**self.doc, "interrupt": None, "interrupt_schema": None}
            if kind == "handoff_approval":
                self._route_handoff(len(self.doc["frames"]) - 1, self.doc["pending_handoff"])
                self.doc = {**self.doc, "pending_handoff": None}
            elif kind == "interrupt_before":  # approved: the step runs as if never paused
                self.inject = {"skip_before": True}
            elif kind in ("interrupt", "agent_question"):
                self.inject = {"response": resume["response"], "skip_before": True}
        elif "message" in resume:
            i = len(self.doc["frames"]) - 1
            message = {"role": "user", "content": resume["message"], "ts": resume.get("ts")}
            messages = [*self.doc["frames"][i]["messages"], message]
            self.doc = memory.replace_frame({**self.doc, "awaiting": None}, i, messages=messages)
            self.inject = {"user_message": resume["message"]}
        elif status == "suspended":
            self.inject = {
                "continuation": {"resumed_at": rfc3339(utcnow()), **resume.get("info", {})}
            }

    async def _ask_again(self, after: dict[str, Any]) -> None:
        """Loaded with an ``interrupt_after`` not answered (see memory.pending_after):
        its node has run, so the question is asked again, at once, with a new id."""
        i = len(self.doc["frames"]) - 1
        last = self.doc["frames"][i]["last"]
        await self._interrupt(i, last, "interrupt_after", after["payload"], None)

    async def _recovery_limit(self) -> None:
        """Its workers died at this checkpoint again and again: fail instead of dying."""
        top = self.doc["frames"][0]
        limit = self.engine.settings.max_recoveries
        msg = (
            f"the run's worker died {self.recoveries} times at this checkpoint "
            f"(STEPWISE_MAX_RECOVERIES={limit}); resume it once the cause is fixed"
        )
        await self._fail(0, top["node"] or top["last"], _error("recovery_limit_exceeded", msg))

    # -- the cycle ------------------------------------------------------------------------

    async def _step(self) -> bool:
        """Run the current node once; True while the run goes on."""
        i = len(self.doc["frames"]) - 1
        frame = self.doc["frames"][i]
        if branchdoc.PARALLEL in frame:  # parallel branches (app.engine.branches)
            from app.engine import branches

            return await branches.run_parallel(self, i)
        node_id: str | None = frame["node"]
        if node_id is None:  # its frame ended: a run resumed or forked at its end, or an
            # answer to an interrupt_after of the frame's last node
            return await self._end_frame(i, frame["last"])
        self.at_node = memory.node_path(self.doc, i, node_id)
        if frame.get(memory.ROUTE_AGAIN) == node_id:  # its step completed before the run failed
            frames = list(self.doc["frames"])
            frames[i] = {k: v for k, v in frame.items() if k != memory.ROUTE_AGAIN}
            self.doc, self.inject = {**self.doc, "frames": frames}, {}
            return await self._route(i, node_id)
        definition = self.frames.definition(i)
        node = definition.nodes[node_id]
        inject, self.inject = self.inject, {}
        self.node_inject = (
            inject  # the context of this node's step is also the context of its `set`
        )
        if self.step_count >= self.max_steps:
            msg = f"the run passed max_steps ({self.max_steps})"
            return await self._fail(i, node_id, _error("max_steps_exceeded", msg))
        if frame["visits"].get(node_id, 0) > definition.visit_limit(node_id):  # by a goto
            return await self._too_many_visits(i, node_id, node_id)
        if node.interrupt_before and not inject.get("skip_before"):
            payload = {"reason": node.interrupt_before}
            return await self._interrupt(i, node_id, "interrupt_before", payload, None)
        if node.step == "map":  # items rendered one by one (app.engine.mapstep)
            from app.engine import mapstep

            return await mapstep.start_map(self, i, node_id, node)
        context = self._context(i, node_id, node, inject)
        scope = self._scope(i, context)
        try:
            config = self.engine.templates.render(
                # a subgraph's `with` becomes its stored inputs: no secrets in its scope
                node.with_,
                scope if node.step == "subgraph" else {**scope, "secrets": self.engine.secrets},
            )
        except TemplateError as exc:
            return await self._fail(i, node_id, self._template_error(i, node_id, exc))
        path = memory.node_path(self.doc, i, node_id)
        visit = frame["visits"].get(node_id, 1)
        self.events.append(NewEvent("node.started", path, {"step": node.step, "visit": visit}))
        if node.step == "subgraph":
            error = await self.frames.enter(self, i, node_id, config, visit)
            return True if error is None else await self._fail(i, node_id, error)
        step = self.engine.registry.get(node.step)
        self.pure = bool(getattr(step, "pure", False))
        if not self.pure or self.effect_staged:
            # commit the steps before it, and let watchers see node.started
            await self._flush()
        ctx = StepContext(
            run_id=self.run_id,
            node=self._step_name(path or node_id),
            step=node.step,
            config=config,
            inputs=self._inputs(i),
            state=frame["state"],
            context=context,
            attempt=self.attempt + 1,
            visit=visit,
            http=self.engine.http,
            services=self.engine,
            emit=lambda data: self._progress(path, data),
            # agents (DESIGN §9): their own events, the run's usage, their definition
            emit_event=lambda type_, data: self._step_event(path, type_, data),
            usage=self._account,
            definition=definition,
            scope=scope,
        )
        began = time.perf_counter()
        result = await execute_with_retry(step, ctx, node, self._retrying)
        metrics.observe_step(node.step, result.status.value, time.perf_counter() - began)
        # perf (W1C): its checkpoint may ride with the next step's start (recording.py)
        self.effect_pending = not self.pure
        return await self._handle(i, node_id, node, result)

    async def _handle(self, i: int, node_id: str, node: Node, result: StepResult) -> bool:
        redact = self.engine.redactor.json
        if result.status is StepStatus.SUCCEEDED:
            return await self._succeeded(i, node_id, redact(result.output))
        if result.status is StepStatus.FAILED:
            assert result.error is not None
            error = result.error
            return await self._fail(
                i,
                node_id,
                StepError(
                    error.code,
                    self.engine.redactor.text(error.message),
                    error.retryable,
                    details=redact(error.details),
                ),
            )
        if result.status is not StepStatus.HANDOFF:  # a handoff counts once it is valid
            self.step_count += 1
        if result.status is StepStatus.NEEDS_CONTINUATION:
            if result.output is not None:
                self._record_output(i, node_id, redact(result.output))
            due = result.resume_at
            info = {"resume_at": rfc3339(due) if due else None}
            self.events.append(
                NewEvent("run.suspended", memory.node_path(self.doc, i, node_id), info)
            )
            return await self._commit(RunStatus.SUSPENDED, i, node_id, due_at=due)
        if result.status is StepStatus.INTERRUPTED:
            interrupt = result.interrupt or {}
            # agents (DESIGN §9): an agent's ask_human pauses with kind agent_question
            kind = "agent_question" if interrupt.get("kind") == "agent_question" else "interrupt"
            return await self._interrupt(
                i,
                node_id,
                kind,
                redact(interrupt.get("payload")),
                redact(interrupt.get("schema")),
            )
        if result.status is StepStatus.AWAITING_INPUT:
            path = memory.node_path(self.doc, i, node_id)
            prompt = None if result.prompt is None else self.engine.redactor.text(result.prompt)
            awaiting = {"node": path, "prompt": prompt}
            messages = self.doc["frames"][i]["messages"]
            # said once: a resume or a fork at this very pause runs the node again, and its
            # prompt is then the session's last message already (no user turn came since)
            last = messages[-1] if messages else {}
            repeated = (last.get("role"), last.get("content")) == ("assistant", prompt)
            if prompt is not None and not repeated:
                said = {"role": "assistant", "content": prompt, "ts": rfc3339(utcnow())}
                self.doc = memory.replace_frame(self.doc, i, messages=[*messages, said])
            self.doc = {**self.doc, "awaiting": awaiting}
            self.events.append(NewEvent("run.awaiting_input", path, awaiting))
            return await self._commit(RunStatus.AWAITING_INPUT, i, node_id)
        assert result.handoff is not None
        return await self._handoff(i, node_id, node, result.handoff)

    async def _succeeded(self, i: int, node_id: str, output: Any, *, count: bool = True) -> bool:
        definition = self.frames.definition(i)
        node = definition.nodes[node_id]
        path = memory.node_path(self.doc, i, node_id)
        self._record_output(i, node_id, output)
        frame = self.doc["frames"][i]
        if node.set:
            context = self._context(i, node_id, node, getattr(self, "node_inject", {}))
            scope = {**self._scope(i, context), "output": output}
            try:
                updates = self.engine.templates.render(node.set, scope)
            except TemplateError as exc:
                return await self._fail(i, node_id, self._template_error(i, node_id, exc))
            state = {**frame["state"], **updates}
            if len(encode_json(state)) > self.engine.settings.max_state_bytes:
                msg = f"state is larger than {self.engine.settings.max_state_bytes} bytes"
                return await self._fail(i, node_id, _error("state_too_large", msg))
            self.doc = memory.replace_frame(self.doc, i, state=state)
            self._wrote(i, sorted(updates))
            self.events.append(NewEvent("state.updated", path, {"keys": sorted(updates)}))
        self.events.append(NewEvent("node.completed", path, self._output_event(output)))
        if count:
            self.step_count += 1
        return await self._route(i, node_id)

    async def _route(self, i: int, node_id: str) -> bool:
        """Go on from ``node_id``, whose step completed: choose its edge (DESIGN §2). A
        failure here leaves the frame at the node with ``memory.ROUTE_AGAIN``: a resume chooses
        again, and never runs the completed step again (DESIGN §1)."""
        definition = self.frames.definition(i)
        node = definition.nodes[node_id]
        path = memory.node_path(self.doc, i, node_id)
        try:
            choice = choose_next(
                definition, node_id, self._scope(i, {}), self.engine.templates, path or node_id
            )
        except TemplateError as exc:
            return await self._unrouted(i, node_id, self._template_error(i, node_id, exc))
        self.events.extend(choice.events)
        if not choice.matched:
            msg = f"no outgoing edge of node {path!r} matched"
            return await self._unrouted(i, node_id, _error("no_matching_edge", msg))
        if choice.branches is not None:  # a fan-out edge (app.engine.branches)
            from app.engine import branches

            return await branches.fan_out(self, i, node_id, choice)
        self.doc = memory.replace_frame(
            self.doc, i, last=node_id, node=choice.next_node, handoff=None
        )
        if choice.next_node is not None and not self._enter(i, choice.next_node):
            return await self._too_many_visits(i, node_id, choice.next_node, routed=True)
        if node.interrupt_after:  # the next node chosen (none: the frame ends once answered)
            return await self._interrupt(
                i, node_id, "interrupt_after", {"reason": node.interrupt_after}, None
            )
        if choice.next_node is None:
            return await self._end_frame(i, node_id)
        return await self._commit(RunStatus.RUNNING, i, node_id)

    async def _end_frame(self, i: int, node_id: str) -> bool:
        """Frame ``i`` has no next node: a subgraph's output goes to its parent's node, or
        the run (a branch: the branch) completes."""
        if i == 0:
            return await self._complete()
        try:
            parent, sub_output = self.frames.leave(self, i)
        except TemplateError as exc:
            return await self._fail(i, node_id, self._template_error(i, node_id, exc))
        return await self._succeeded(i - 1, parent, sub_output, count=False)

    async def _complete(self) -> bool:
        definition = self.frames.definition(0)
        frame = self.doc["frames"][0]
        if definition.output is None:
            output = frame["state"]
        else:
            try:
                output = self.engine.templates.render(definition.output, self._scope(0, {}))
            except TemplateError as exc:  # a resume renders it again (no step runs again)
                error = self._template_error(0, frame["last"], exc, "the workflow's output")
                return await self._fail(0, frame["last"], error, stay=True)
        self.events.append(NewEvent("run.completed", None, {"output": output}))
        return await self._commit(RunStatus.COMPLETED, 0, frame["last"], output=output)

    async def _unrouted(self, i: int, node_id: str, error: StepError) -> bool:
        """Fail the run at ``node_id``, whose step completed but whose edge could not be
        chosen: a resume chooses again (``_route``)."""
        self.doc = memory.replace_frame(self.doc, i, **{memory.ROUTE_AGAIN: node_id})
        return await self._fail(i, node_id, error)

    async def _fail(
        self,
        i: int,
        node_id: str,
        error: StepError,
        *,
        names: str | None = None,
        stay: bool = False,
    ) -> bool:
        """Fail the run at ``node_id`` (where a resume retries it; with ``stay``, the frame
        keeps its position: the run's end, whose output a resume renders again); the error
        and its events name ``names`` instead when given (a node that could not be entered)."""
        path = memory.node_path(self.doc, i, names or node_id)
        body: dict[str, Any] = {"code": error.code, "message": error.message, "node": path}
        if error.details:
            body["details"] = error.details
        body = self.engine.redactor.json(body)  # a code or message may quote a secret
        self.events.append(NewEvent("node.failed", path, {"error": body}))
        if i > 0:  # the subgraph's frames stay: a resume retries the node that failed
            parent = self.doc["frames"][i]["parent_node"]
            msg = f"subgraph of node {parent!r} failed at {path!r}: {error.message}"
            return await self._fail(i - 1, parent, _error("subgraph_failed", msg, error=body))
        if not stay:
            self.doc = memory.replace_frame(self.doc, 0, node=node_id)
        self.events.append(NewEvent("run.failed", path, {"error": body}))
        return await self._commit(RunStatus.FAILED, 0, node_id, error=body)

    def _whose(self) -> dict[str, Any]:
        """What an interrupt says of the execution that asks (a branch names itself)."""
        return {}

    async def _interrupt(
        self, i: int, node_id: str, kind: str, payload: Any, schema: dict[str, Any] | None
    ) -> bool:
        path = memory.node_path(self.doc, i, node_id)
        interrupt = {
            "id": str(uuid.uuid4()),
            "node": path,
            "kind": kind,
            "payload": payload,
            "created_at": rfc3339(utcnow()),
            **self._whose(),
        }
        self.doc = {**self.doc, "interrupt": interrupt, "interrupt_schema": schema}
        self.events.append(NewEvent("run.interrupted", path, {"interrupt": interrupt}))
        return await self._commit(RunStatus.INTERRUPTED, i, node_id)

    # -- handoff ------------------------------------------------------------------------

    async def _handoff(self, i: int, node_id: str, node: Node, handoff: dict[str, Any]) -> bool:
        definition = self.frames.definition(i)
        agents = definition.agent_map
        target, source = handoff.get("to"), node.agent
        targets = {n.agent: nid for nid, n in definition.nodes.items() if n.agent}
        if not isinstance(target, str) or target not in targets:
            msg = f"handoff to agent {target!r}, which no node is bound to (`agent: {target}`)"
            return await self._fail(i, node_id, _error("unknown_agent", msg))
        allowed = agents[source].handoff_targets if source in agents else None
        if allowed is not None and target not in allowed:
            msg = f"agent {source!r} may not hand off to {target!r} (allowed: {allowed})"
            return await self._fail(i, node_id, _error("handoff_not_allowed", msg))
        frame = self.doc["frames"][i]
        if frame["handoff_depth"] + 1 > definition.max_handoff_depth:
            msg = f"more than max_handoff_depth ({definition.max_handoff_depth}) handoffs"
            return await self._fail(i, node_id, _error("max_handoff_depth_exceeded", msg))
        obj = {
            "from_agent": source,
            "to_agent": target,
            "payload": self.engine.redactor.json(handoff.get("payload")),
        }
        if handoff.get("messages") is not None:  # agents (DESIGN §9): the conversation
            obj["messages"] = self.engine.redactor.json(handoff["messages"])
        self._record_output(i, node_id, obj)
        path = memory.node_path(self.doc, i, node_id)
        self.events.append(NewEvent("node.completed", path, self._output_event(obj)))
        self.step_count += 1
        route = {**obj, "from_node": node_id, "to_node": targets[target]}
        needs_approval = (
            node.handoff_approval
            or (target in agents and agents[target].handoff_approval)
            or (source in agents and agents[source].handoff_approval)
        )
        if needs_approval:
            self.doc = memory.replace_frame({**self.doc, "pending_handoff": route}, i, last=node_id)
            return await self._interrupt(i, node_id, "handoff_approval", obj, None)
        if not self._route_handoff(i, route):
            return await self._too_many_visits(i, node_id, route["to_node"])
        return await self._commit(RunStatus.RUNNING, i, node_id)

    def _route_handoff(self, i: int, route: dict[str, Any]) -> bool:
        keys = ("from_agent", "to_agent", "payload", "messages")
        obj: dict[str, Any] = {k: route[k] for k in keys if k in route}
        frame = self.doc["frames"][i]
        self.doc = memory.replace_frame(
            self.doc,
            i,
            state={**frame["state"], "handoff": obj},
            handoff=obj,
            handoff_depth=frame["handoff_depth"] + 1,
            last=route["from_node"],
            node=route["to_node"],
        )
        self._wrote(i, ["handoff"])  # a branch's join takes it like any key it wrote
        path = memory.node_path(self.doc, i, route["from_node"])
        self.events.append(NewEvent("state.updated", path, {"keys": ["handoff"]}))
        self.events.append(
            NewEvent(
                "run.handoff",
                path,
                {**obj, "from_node": route["from_node"], "to_node": route["to_node"]},
            )
        )
        return self._enter(i, route["to_node"])

    # -- helpers ----------------------------------------------------------------------------

    def _step_name(self, path: str) -> str:
        """The node as its step sees it (``ctx.node``, part of its idempotency key)."""
        return path

    def _wrote(self, i: int, keys: list[str]) -> None:
        """``set`` wrote ``keys`` in frame ``i`` (a parallel branch keeps them for its join)."""

    def _enter(self, i: int, node_id: str) -> bool:
        """Count a visit; False when it passes the node's max_iterations."""
        frame = self.doc["frames"][i]
        definition = self.frames.definition(i)
        visits = frame["visits"].get(node_id, 0) + 1
        self.doc = memory.replace_frame(self.doc, i, visits={**frame["visits"], node_id: visits})
        return bool(visits <= definition.visit_limit(node_id))

    async def _too_many_visits(
        self, i: int, node_id: str, target: str, *, routed: bool = False
    ) -> bool:
        """Fail the run: ``target`` would pass its visit limit. ``routed``: the edge from
        ``node_id``, whose step completed, led there (a resume chooses again)."""
        definition = self.frames.definition(i)
        limit = definition.visit_limit(target)
        path = memory.node_path(self.doc, i, target)
        msg = f"node {path!r} was entered more than {limit} times"
        # (retried by a resume)
        self.doc = memory.replace_frame(
            self.doc, i, node=node_id, **({memory.ROUTE_AGAIN: node_id} if routed else {})
        )
        error = _error("max_node_iterations_exceeded", msg, node=path)
        return await self._fail(i, node_id, error, names=target)

    def _inputs(self, i: int) -> dict[str, Any]:
        inputs: dict[str, Any] = self.inputs if i == 0 else self.doc["frames"][i]["inputs"]
        return inputs

    def _record_output(self, i: int, node_id: str, output: Any) -> None:
        frame = self.doc["frames"][i]
        self.doc = memory.replace_frame(
            self.doc, i, nodes={**frame["nodes"], node_id: {"output": output}}
        )

    def _context(self, i: int, node_id: str, node: Node, inject: dict[str, Any]) -> dict[str, Any]:
        frame = self.doc["frames"][i]
        context: dict[str, Any] = {
            "run_id": self.run_id,
            "node": node_id,
            "agent_id": node.agent,
            "visit": frame["visits"].get(node_id, 1),
            "messages": frame["messages"],
        }
        if frame.get("handoff") is not None:
            context["handoff"] = frame["handoff"]
        if i > 0:
            context["subgraph_id"] = frame["subgraph_id"]
        context.update({k: v for k, v in inject.items() if k != "skip_before"})
        return context

    def _scope(self, i: int, context: dict[str, Any]) -> dict[str, Any]:
        frame = self.doc["frames"][i]
        return {
            "inputs": self._inputs(i),
            "state": frame["state"],
            "nodes": frame["nodes"],
            "context": context,
        }

    def _template_error(
        self, i: int, node_id: str, exc: TemplateError, where: str | None = None
    ) -> StepError:
        where = where or f"node {memory.node_path(self.doc, i, node_id)!r}"
        message = self.engine.redactor.text(f"{where}: {exc.message} (in {exc.expression!r})")
        return _error("expression_error", message, expression=exc.expression)

    def _output_event(self, output: Any) -> dict[str, Any]:
        encoded = encode_json(output, default=str)
        if len(encoded) > MAX_EVENT_OUTPUT_BYTES:
            return {"output_bytes": len(encoded), "output_truncated": True}
        return {"output": output}

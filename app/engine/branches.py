"""Parallel branches inside one run execution (DESIGN §10): fan-out, join, merge.

A fan-out edge puts a ``parallel`` section in the frame (``app.engine.branchdoc``); the
run's execution then drives one ``BranchExecution`` per branch, each an asyncio task
that runs the ordinary runner cycle over its own branch document. At most
``max_concurrency`` steps run at once (one semaphore per run). Every branch's checkpoint
is a checkpoint of the whole run: the root execution is the only writer and commits one
branch step at a time (a lock), composing the run's document from what each branch last
committed, so group commit of pure steps and "a step's checkpoint and events in one
transaction" hold as for a single path. A commit runs in its own task, shielded: a branch
cancelled because a sibling failed never leaves a write half-done.

When every branch of the section arrived at the join (or ended), their writes are merged
(reducers, ``state_conflict``) and the frame goes on at the join; when the branches left
can only wait, the run pauses as a whole (interrupted, else awaiting_input, else
suspended). A failing branch cancels its siblings and fails the run.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.engine import branchdoc, memory
from app.engine.branchdoc import ARRIVED, ENDED, PARALLEL, RUNNING
from app.engine.edges import EdgeChoice
from app.engine.joins import JoinAnalysis
from app.engine.lifecycle import RunStatus
from app.engine.runner import RunExecution
from app.engine.subgraphs import SubgraphFrames
from app.engine.templates import TemplateError
from app.schemas.definition import WorkflowDefinition
from app.steps.base import StepError
from app.store.database import transaction
from app.store.events import NewEvent

if TYPE_CHECKING:
    from collections.abc import Callable

# a branch's own pause is announced when the whole run pauses (``_pause``)
BRANCH_PAUSE_EVENTS = frozenset({"run.interrupted", "run.awaiting_input", "run.suspended"})


class Live:
    """A section being run: frame ``i``'s branches (``section`` None: as in the doc)."""

    def __init__(self, i: int, children: list[BranchExecution]) -> None:
        self.i = i
        self.children = {child.branch_id: child for child in children}
        self.section: dict[str, Any] | None = None
        self.group: asyncio.TaskGroup | None = None

    def opened(self) -> None:
        """The task group is open and the branches started (a map starts its items)."""

    def compose(self, doc: memory.Doc) -> memory.Doc:
        section = self.section or doc["frames"][self.i][PARALLEL]
        entries = [
            {**entry, "doc": self.children[entry["id"]].composed()}
            if entry["id"] in self.children
            else entry
            for entry in section["branches"]
        ]
        return memory.replace_frame(doc, self.i, **{PARALLEL: {**section, "branches": entries}})


class BranchFailed(Exception):
    """A branch failed for good: the run fails, its siblings are cancelled."""

    def __init__(
        self,
        branch: BranchExecution | str,
        last: str | None,
        error: dict[str, Any],
        events: list[NewEvent],
    ) -> None:
        super().__init__(error.get("message"))
        # the branch, or only its id when it failed before it could start (a map item)
        self.branch = branch if isinstance(branch, BranchExecution) else None
        self.branch_id = branch.branch_id if isinstance(branch, BranchExecution) else branch
        self.last = last
        self.error = error
        self.events = events


class ParallelRuntime:
    """What the branches of one run share: the single writer's lock, the step slots."""

    def __init__(self, root: RunExecution) -> None:
        self._root = weakref.ref(root)  # the runtime is kept in a weak map keyed by its root
        self.lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(root.frames.top.max_concurrency)
        self.base: memory.Doc = root.doc  # the root's document under its live section
        self.live: Live | None = None

    @property
    def root(self) -> RunExecution:
        root = self._root()
        assert root is not None
        return root


_RUNTIMES: weakref.WeakKeyDictionary[RunExecution, ParallelRuntime] = weakref.WeakKeyDictionary()


def runtime_of(root: RunExecution) -> ParallelRuntime:
    runtime = _RUNTIMES.get(root)
    if runtime is None:
        runtime = _RUNTIMES[root] = ParallelRuntime(root)
    return runtime


def root_of(execution: RunExecution) -> RunExecution:
    return execution.root if isinstance(execution, BranchExecution) else execution


def compose(doc: memory.Doc, live: Live | None) -> memory.Doc:
    """The document with each live branch's last committed document in its section."""
    return doc if live is None else live.compose(doc)


def root_doc(runtime: ParallelRuntime) -> memory.Doc:
    return compose(runtime.base, runtime.live)


async def write_locked(runtime: ParallelRuntime, write: Callable[[], Any]) -> Any:
    """Run ``write`` under the writer's lock, in a task of its own that a cancellation of
    the caller does not interrupt."""

    async def locked() -> Any:
        async with runtime.lock:
            return await write()

    return await asyncio.shield(asyncio.create_task(locked()))


# -- fan-out ------------------------------------------------------------------------------------


async def fan_out(execution: RunExecution, i: int, node_id: str, choice: EdgeChoice) -> bool:
    """Start one branch per target of the fan-out edge ``choice`` took from ``node_id``."""
    assert choice.branches is not None
    assert choice.edge_index is not None
    definition = execution.frames.definition(i)
    frame = execution.doc["frames"][i]
    meeting = JoinAnalysis(definition).meeting(choice.edge_index)
    join = meeting.join if meeting.valid else None
    prefix = f"{execution.branch_id}." if isinstance(execution, BranchExecution) else ""
    plain = {k: v for k, v in frame.items() if k != PARALLEL}
    entries = []
    for target in choice.branches:
        visits = frame["visits"].get(target, 0) + 1
        limit = definition.nodes[target].max_iterations or definition.max_node_iterations
        if visits > limit:
            return await execution._too_many_visits(i, node_id, target)
        branch_frame = {
            **plain,
            "node": target,
            "last": node_id,
            "visits": {**frame["visits"], target: visits},
            "handoff": None,
        }
        branch_doc = {"frames": [branch_frame], "interrupt": None, "awaiting": None, "written": []}
        entries.append({"id": prefix + target, "doc": branch_doc})
    section = {"from": node_id, "join": join, "base": frame["state"], "branches": entries}
    execution.doc = memory.replace_frame(
        execution.doc, i, last=node_id, node=join, handoff=None, **{PARALLEL: section}
    )
    return await execution._commit(RunStatus.RUNNING, i, node_id)


# -- running a section ---------------------------------------------------------------------------


async def run_parallel(execution: RunExecution, i: int) -> bool:
    """Run the section of frame ``i`` until its branches meet, the run pauses or fails."""
    section = execution.doc["frames"][i][PARALLEL]
    if section.get("kind") == "map":
        from app.engine import mapstep

        return await mapstep.run_map(execution, i)
    root = root_of(execution)
    runtime = runtime_of(root)
    definition = execution.frames.definition(i)
    children = [
        await BranchExecution.restore(execution, i, entry, section["join"], [definition])
        for entry in section["branches"]
    ]
    try:
        await run_section(execution, Live(i, children), children)
    except BranchFailed as failure:
        if execution is not root:
            raise
        return await fail_run(runtime, failure)
    section = execution.doc["frames"][i][PARALLEL]
    done = (ARRIVED, ENDED)
    if all(branchdoc.branch_status(e["doc"], section["join"]) in done for e in section["branches"]):
        return await _join(execution, i)
    if root.stopping():  # branches stopped at a step boundary: the run stays claimable
        return execution is root
    if execution is not root:
        return False  # blocked by paused branches of its own: the run pauses (below)
    return await pause_run(runtime)


async def run_section(execution: RunExecution, live: Live, children: list[BranchExecution]) -> None:
    """Run the runnable ``children`` of ``live`` as tasks; the execution's document then
    holds what they committed. A branch's failure is raised as ``BranchFailed`` (from a
    branch execution only at the root, which records it)."""
    root = root_of(execution)
    runtime = runtime_of(root)
    if execution is root:
        runtime.base, runtime.live = execution.doc, live
    else:
        assert isinstance(execution, BranchExecution)
        execution.live = live
    try:
        async with asyncio.TaskGroup() as group:
            live.group = group
            for child in children:
                if child.runnable():
                    group.create_task(child.run(runtime))
            live.opened()
    except BaseExceptionGroup as failures:
        raise _first(failures) from None
    if execution is root:
        execution.doc = root_doc(runtime)
        runtime.live = None
    else:
        assert isinstance(execution, BranchExecution)
        execution.doc = execution.committed = execution.composed()
        execution.live = None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The exception to act on: a branch's failure first, else whatever went wrong."""
    flat: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            flat.append(exc)

    walk(group)
    for exc in flat:
        if isinstance(exc, BranchFailed):
            return exc
    return flat[0]


async def fail_run(runtime: ParallelRuntime, failure: BranchFailed) -> bool:
    """Record a branch's failure as the run's (at the root), its siblings cancelled."""
    root = runtime.root

    async def write() -> bool:
        if failure.branch is not None:
            failure.branch.committed = failure.branch.doc  # it retries its node on a resume
        root.doc = root_doc(runtime)
        runtime.live = None
        root.events.extend(failure.events)
        root.pure = False
        details = {**(failure.error.get("details") or {}), "branch": failure.branch_id}
        error = {**failure.error, "details": details}
        return bool(await root._checkpoint(RunStatus.FAILED, failure.last, error=error))

    return bool(await write_locked(runtime, write))


async def pause_run(runtime: ParallelRuntime) -> bool:
    """Every branch left waits: pause the run (DESIGN §10's order of statuses)."""
    root = runtime.root
    status = branchdoc.pause_status(root.doc)
    if status is None:
        raise RuntimeError("parallel section stopped with no branch paused or able to go on")
    node = branchdoc.current_node(root.doc)
    due = None
    if status == "interrupted":
        pending = branchdoc.pending_interrupts(root.doc)
        data: dict[str, Any] = {"interrupt": pending[0], "interrupts": pending}
    elif status == "awaiting_input":
        data = dict(branchdoc.first_awaiting(root.doc) or {})
    else:
        due = branchdoc.earliest_due(root.doc)
        data = {"resume_at": due.isoformat() if due else None}

    async def write() -> bool:
        root.events.append(NewEvent(f"run.{status}", node, data))
        root.pure = False
        return bool(await root._checkpoint(RunStatus(status), None, due_at=due))

    return bool(await write_locked(runtime, write))


# -- the join ------------------------------------------------------------------------------------


def _reduce(reducer: str, current: Any, value: Any) -> Any:
    """Fold one branch's value into the key's value (DESIGN §10); ValueError if it
    cannot be folded."""
    if reducer == "append":
        items = list(current) if isinstance(current, list) else [] if current is None else [current]
        return items + (list(value) if isinstance(value, list) else [value])
    if reducer == "merge":
        if not isinstance(value, dict) or not isinstance(current, dict | None):
            raise ValueError("`merge` combines objects")
        return {**(current or {}), **value}
    if reducer == "add":
        numbers = (int, float)
        if current is None:
            current = 0
        bad = [v for v in (current, value) if isinstance(v, bool) or not isinstance(v, numbers)]
        if bad:
            raise ValueError("`add` adds numbers")
        return current + value
    return value  # replace


def merge_branches(
    definition: WorkflowDefinition, section: dict[str, Any]
) -> tuple[dict[str, Any], list[str]] | StepError:
    """The state after the join, and the keys the branches wrote; or the StepError of a
    key written by two or more branches without a reducer."""
    state = dict(section["base"])
    writes: dict[str, list[tuple[str, Any]]] = {}
    for entry in section["branches"]:
        branch_state = entry["doc"]["frames"][0]["state"]
        for key in entry["doc"].get("written", []):
            writes.setdefault(key, []).append((entry["id"], branch_state.get(key)))
    for key, values in writes.items():
        reducer = definition.reducers.get(key)
        writers = [branch for branch, _ in values]
        if reducer is None:
            if len(values) > 1:
                msg = (
                    f"state key {key!r} was written by branches {', '.join(map(repr, writers))}; "
                    f"give it a reducer (`reducers: {{{key}: append|merge|add|replace}}`)"
                )
                return StepError("state_conflict", msg, details={"key": key, "branches": writers})
            state[key] = values[0][1]
            continue
        folded = state.get(key)
        for branch, value in values:
            try:
                folded = _reduce(reducer, folded, value)
            except ValueError as exc:
                msg = f"state key {key!r}: branch {branch!r} wrote {value!r}, but {exc}"
                return StepError("state_conflict", msg, details={"key": key, "branches": writers})
        state[key] = folded
    return state, sorted(writes)


async def _join(execution: RunExecution, i: int) -> bool:
    frame = execution.doc["frames"][i]
    section = frame[PARALLEL]
    definition = execution.frames.definition(i)
    join, source = section["join"], section["from"]
    merged = merge_branches(definition, section)
    if isinstance(merged, StepError):
        return await execution._fail(i, join or source, merged)
    state, keys = merged
    if len(json.dumps(state)) > execution.engine.settings.max_state_bytes:
        msg = f"state is larger than {execution.engine.settings.max_state_bytes} bytes"
        return await execution._fail(i, join or source, StepError("state_too_large", msg))
    nodes, visits = dict(frame["nodes"]), dict(frame["visits"])
    for entry in section["branches"]:
        branch_frame = entry["doc"]["frames"][0]
        nodes.update(branch_frame["nodes"])
        for node_id, count in branch_frame["visits"].items():
            visits[node_id] = max(visits.get(node_id, 0), count)
    plain = {k: v for k, v in frame.items() if k != PARALLEL}
    frames = list(execution.doc["frames"])
    frames[i] = {**plain, "state": state, "nodes": nodes, "visits": visits, "node": join}
    execution.doc = {**execution.doc, "frames": frames}
    if isinstance(execution, BranchExecution) and i == 0:
        written = sorted({*execution.doc.get("written", []), *keys})
        execution.doc = {**execution.doc, "written": written}
    ids = [entry["id"] for entry in section["branches"]]
    path = memory.node_path(execution.doc, i, join or source)
    execution.events.append(NewEvent("state.updated", path, {"keys": keys, "joined": ids}))
    if join is not None:
        return await execution._commit(RunStatus.RUNNING, i, source)
    if i > 0:  # the branches ended a subgraph: its output goes to the node that entered it
        try:
            parent, output = execution.frames.leave(execution, i)
        except TemplateError as exc:
            return await execution._fail(i, source, execution._template_error(i, source, exc))
        return await execution._succeeded(i - 1, parent, output, count=False)
    return await execution._complete()


# -- resuming --------------------------------------------------------------------------------


def route_resume(doc: memory.Doc, status: str, resume: dict[str, Any]) -> memory.Doc:
    """Hand what the API left for a paused run to the branch (or branches) it is for."""
    if "response" in resume:
        wanted = resume["response"].get("interrupt_id")
        return branchdoc.route(
            doc,
            lambda _, d, st: st == "interrupted" and d["interrupt"]["id"] == wanted,
            resume,
        )
    if "message" in resume:
        target = resume.get("branch")
        taken: list[str] = []

        def first_awaiting(branch_id: str, _: memory.Doc, st: str) -> bool:
            if st != "awaiting_input" or taken or target not in (None, branch_id):
                return False
            taken.append(branch_id)
            return True

        return branchdoc.route(doc, first_awaiting, resume)
    if status == "suspended":
        now = datetime.now(UTC)
        every = bool(resume.get("info", {}).get("requested"))

        def due(_: str, d: memory.Doc, st: str) -> bool:
            at = d.get("suspended", {}).get("due_at")
            return st == "suspended" and (
                every or (at is not None and datetime.fromisoformat(at) <= now)
            )

        return branchdoc.route(doc, due, resume)
    return doc


# -- one branch ------------------------------------------------------------------------------


class BranchExecution(RunExecution):
    """The runner cycle over one branch's document; its commits go through the root."""

    committed: memory.Doc  # the branch's document as of its last commit
    live: Live | None

    @classmethod
    async def restore(
        cls,
        parent: RunExecution,
        i: int,
        entry: dict[str, Any],
        join: str | None,
        first: list[WorkflowDefinition],
    ) -> BranchExecution:
        """The branch of ``entry``; ``first``: the workflow of its first frame."""
        definitions = list(first)
        if len(entry["doc"]["frames"]) > 1:
            async with transaction(parent.engine.sessions) as session:
                for frame in entry["doc"]["frames"][1:]:
                    ref = frame["workflow"]
                    stored, _, _ = await parent.engine.definitions.stored(
                        session, ref["name"], ref["version"]
                    )
                    definitions.append(stored)
        return cls(parent, i, entry, join, definitions)

    def __init__(
        self,
        parent: RunExecution,
        i: int,
        entry: dict[str, Any],
        join: str | None,
        definitions: list[WorkflowDefinition],
    ) -> None:
        root = root_of(parent)
        super().__init__(root.engine, root.run_id, root.lease)
        self.root = root
        self.branch_id: str = entry["id"]
        self.join = join
        self.frames = SubgraphFrames(root.engine, definitions)
        self.inputs = parent._inputs(i)
        self.webhook = None
        self.attempt = 0
        self.max_steps = root.max_steps
        self.live = None
        doc = entry["doc"]
        self.committed = doc
        resume = doc.get("resume")
        self.doc = {k: v for k, v in doc.items() if k != "resume"}
        if resume is not None:  # an answer routed here (``route_resume``): take it now
            self.doc.pop("suspended", None)
            self._resume(resume["status"], {k: v for k, v in resume.items() if k != "status"})
            self.events = [e for e in self.events if e.type != "run.resumed"]

    # the run's step counter is shared by all its branches
    @property
    def step_count(self) -> int:
        return self.root.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self.root.step_count = value

    def _settle(self) -> None:
        """Under the writer's lock, before the run's document is composed for this
        branch's commit (a map item leaves its section here)."""

    def composed(self) -> memory.Doc:
        return compose(self.committed, self.live)

    def runnable(self) -> bool:
        return branchdoc.branch_status(self.doc, self.join) == RUNNING

    async def run(self, runtime: ParallelRuntime) -> None:
        while not self.root.stopping():  # a draining process: stop at a step boundary
            if branchdoc.section_index(self.doc) is not None:
                going = await self._step()  # its branches take the slots
            else:
                async with runtime.slots:
                    going = await self._step()
            if not going:
                return

    # -- the runner cycle, branch side

    async def _step(self) -> bool:
        if not self.runnable():
            return False
        return await super()._step()

    def _wrote(self, i: int, keys: list[str]) -> None:
        if i == 0:
            self.doc = {**self.doc, "written": sorted({*self.doc.get("written", []), *keys})}

    async def _complete(self) -> bool:
        """The branch ended (its first frame has no next node)."""
        return await self._commit(RunStatus.RUNNING, 0, self.doc["frames"][0]["last"])

    def _tagged(self) -> list[NewEvent]:
        events = [
            NewEvent(e.type, e.node, {**(e.data or {}), "branch": self.branch_id})
            for e in self.events
        ]
        self.events = []
        return events

    async def _flush(self, **values: Any) -> None:
        events = self._tagged()
        runtime = runtime_of(self.root)
        if not events and not self.root.staged:
            return

        async def write() -> None:
            self.root.events.extend(events)
            await self.root._flush()

        await write_locked(runtime, write)

    async def _commit(
        self,
        status: RunStatus,
        i: int,
        last_node: str | None,
        *,
        due_at: datetime | None = None,
        error: dict[str, Any] | None = None,
        output: Any = None,
    ) -> bool:
        last = memory.node_path(self.doc, i, last_node)
        if status is RunStatus.FAILED:
            assert error is not None
            raise BranchFailed(self, last, error, self._tagged())
        if status is RunStatus.SUSPENDED:
            self.doc = {**self.doc, "suspended": {"due_at": due_at.isoformat() if due_at else None}}
        events = [e for e in self._tagged() if e.type not in BRANCH_PAUSE_EVENTS]
        runtime = runtime_of(self.root)
        doc, pure = self.doc, self.pure

        async def write() -> None:
            self.committed = doc
            self._settle()
            root = self.root
            root.doc = root_doc(runtime)
            root.events.extend(events)
            root.pure = pure
            await root._checkpoint(RunStatus.RUNNING, last)

        await write_locked(runtime, write)
        return self.runnable()

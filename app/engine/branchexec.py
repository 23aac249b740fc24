"""One parallel branch's execution, and what the branches of a run share.

``BranchExecution`` runs the ordinary runner cycle over one branch's document; its
commits go through the root execution (the run's single writer), one at a time under
``ParallelRuntime.lock``, each in a task of its own that a cancellation of the branch
does not interrupt (``write_locked``). ``Live`` is a section being run: the run's
document is composed from what each of its branches last committed.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.engine import branchdoc, memory
from app.engine.branchdoc import ARRIVED, ENDED, PARALLEL, RUNNING
from app.engine.lifecycle import RunStatus
from app.engine.recording import counted
from app.engine.runner import RunExecution
from app.engine.subgraphs import SubgraphFrames
from app.schemas.definition import WorkflowDefinition
from app.store.database import transaction
from app.store.events import NewEvent
from app.store.models import rfc3339

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

# a branch's own pause is a ``branch.paused`` event (the run's status may stay running);
# the run's pause is announced when the whole run pauses (``branches.pause_run``)
BRANCH_PAUSE_EVENTS = frozenset({"run.interrupted", "run.awaiting_input", "run.suspended"})


class Live:
    """A section being run: frame ``i``'s branches (``section`` None: as in the doc)."""

    def __init__(
        self,
        i: int,
        children: list[BranchExecution],
        parent: RunExecution | None = None,
        join: str | None = None,
        definition: WorkflowDefinition | None = None,
    ) -> None:
        self.i = i
        self.children = {child.branch_id: child for child in children}
        self.tasks: dict[str, asyncio.Task[None]] = {}  # the children's, by branch id
        self.section: dict[str, Any] | None = None
        self.group: asyncio.TaskGroup | None = None
        # what an answered child is restored with (``revive``)
        self.parent, self.join, self.definition = parent, join, definition

    def opened(self) -> None:
        """The task group is open and the branches started (a map starts its items)."""

    def start(self, child: BranchExecution, runtime: ParallelRuntime) -> None:
        """Run ``child`` as a task of the section."""
        assert self.group is not None
        self.children[child.branch_id] = child
        self.tasks[child.branch_id] = self.group.create_task(child.run(runtime))

    async def revive(self, entry: dict[str, Any]) -> BranchExecution:
        """The execution of a paused child from ``entry``, its answer routed to it."""
        assert self.parent is not None
        assert self.definition is not None
        return await BranchExecution.restore(
            self.parent, self.i, entry, self.join, [self.definition]
        )

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

    task = asyncio.create_task(locked())
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


def _settled(task: asyncio.Task[Any]) -> None:
    """Take a write's outcome, so that a write whose caller was cancelled meanwhile (a
    run cancelled, a sibling failed) and then failed itself (``LeaseLost``: the run is no
    longer this process's) is not reported as an exception never retrieved; a caller
    still waiting gets it as ever."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a parallel write ended with %r", task.exception())


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
        # a branch goes on in its parent's frame ``i``: the frames before it enclose it
        self.nesting = parent.nesting + i
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
        # an answer to the interrupt_after of its last node (before the join, or of all):
        # it has arrived, or ended, with a commit once run
        self.ends_answered = resume is not None and branchdoc.branch_status(self.doc, join) in (
            ARRIVED,
            ENDED,
        )

    # the run's step counter is shared by all its branches
    @property
    def step_count(self) -> int:
        return self.root.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self.root.step_count = value

    def _account(
        self, delta: dict[str, int] | None = None, turn: tuple[str, int] | None = None
    ) -> dict[str, int]:
        """Model usage is the run's, whichever branch or map item made the call: it is
        counted in the root's document (the base of every commit of the section), so the
        run's resource and its ``token_budget`` see every branch's calls."""
        runtime = runtime_of(self.root)
        runtime.base, usage = counted(runtime.base, delta, turn)
        return usage

    def _settle(self) -> None:
        """Under the writer's lock, before the run's document is composed for this
        branch's commit (a map item leaves its section here)."""

    def composed(self) -> memory.Doc:
        return compose(self.committed, self.live)

    def runnable(self) -> bool:
        status = branchdoc.branch_status(self.doc, self.join)
        return status == RUNNING or (status in (ARRIVED, ENDED) and self.ends_answered)

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
        if self.ends_answered and branchdoc.branch_status(self.doc, self.join) == ARRIVED:
            return await self._complete()  # the answer committed; the join is not its to run
        return await super()._step()

    def _wrote(self, i: int, keys: list[str]) -> None:
        if i == 0:
            self.doc = {**self.doc, "written": sorted({*self.doc.get("written", []), *keys})}

    async def _complete(self) -> bool:
        """The branch ended (its first frame has no next node), or an answer to its last
        node's interrupt_after is committed as it waits at the join."""
        return await self._commit(RunStatus.RUNNING, 0, self.doc["frames"][0]["last"])

    def _whose(self) -> dict[str, Any]:
        return {"branch": self.branch_id}  # two items of a map ask at one node

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
        self.ends_answered = False  # (its answer is in this commit)
        last = memory.node_path(self.doc, i, last_node)
        if status is RunStatus.FAILED:
            assert error is not None
            raise BranchFailed(self, last, error, self._tagged())
        if status is RunStatus.SUSPENDED:
            self.doc = {**self.doc, "suspended": {"due_at": rfc3339(due_at) if due_at else None}}
        events = [
            NewEvent("branch.paused", e.node, {"status": e.type[len("run.") :], **(e.data or {})})
            if e.type in BRANCH_PAUSE_EVENTS
            else e
            for e in self._tagged()
        ]
        runtime = runtime_of(self.root)
        doc, pure = self.doc, self.pure

        async def write() -> None:
            self.committed = doc
            self._settle()
            root = self.root
            root.doc = root_doc(runtime)
            root.events.extend(events)
            # a branch's pause is written at once (its answer may come while others run),
            # not kept back with the pure steps that share a commit
            root.pure = pure and status is RunStatus.RUNNING
            await root._checkpoint(RunStatus.RUNNING, last, branch=self.branch_id)

        await write_locked(runtime, write)
        return self.runnable()

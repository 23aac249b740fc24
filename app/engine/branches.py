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
suspended). A failing branch cancels its siblings and fails the run. Answers to paused
branches reach them through ``app.engine.branchanswers``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.engine import branchdoc, memory
from app.engine.branchanswers import take_answer, watch_answers
from app.engine.branchdoc import ARRIVED, ENDED, PARALLEL
from app.engine.branchexec import (
    BranchExecution,
    BranchFailed,
    Live,
    ParallelRuntime,
    root_doc,
    root_of,
    runtime_of,
    write_locked,
)
from app.engine.edges import EdgeChoice
from app.engine.joins import JoinAnalysis
from app.engine.lifecycle import RunStatus
from app.engine.recording import AnswersArrived
from app.engine.runner import RunExecution
from app.engine.templates import TemplateError
from app.schemas.definition import WorkflowDefinition
from app.steps.base import StepError
from app.store.database import encode_json
from app.store.events import NewEvent
from app.store.models import rfc3339

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
        if visits > definition.visit_limit(target):
            return await execution._too_many_visits(i, node_id, target, routed=True)
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
        live = Live(i, children, execution, section["join"], definition)
        await run_section(execution, live, children)
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
    branch execution only at the root, which records it). The root also takes the
    answers to branches paused meanwhile (``watch_answers``)."""
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
                    live.start(child, runtime)
            live.opened()
            if execution is root:
                group.create_task(watch_answers(runtime, live))
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
        details = {**(failure.error.get("details") or {}), "branch": failure.branch_id}
        error = {**failure.error, "details": details}
        # run.failed says the error as the run resource does
        root.events.extend(
            NewEvent(e.type, e.node, {**(e.data or {}), "error": error})
            if e.type == "run.failed"
            else e
            for e in failure.events
        )
        root.pure = False
        return bool(await root._checkpoint(RunStatus.FAILED, failure.last, error=error))

    return bool(await write_locked(runtime, write))


async def pause_run(runtime: ParallelRuntime) -> bool:
    """Every branch left waits: pause the run (DESIGN §10's order of statuses)."""
    root = runtime.root
    status = branchdoc.pause_status(root.doc)
    if status is None:
        raise RuntimeError("parallel section stopped with no branch paused or able to go on")
    node = branchdoc.current_node(root.doc)
    # a branch's `wait` still comes due while the run waits for a person: the run is
    # claimed again then (``run_store.claim``) and that branch goes on
    due = branchdoc.earliest_due(root.doc)
    if status == "interrupted":
        pending = branchdoc.pending_interrupts(root.doc)
        data: dict[str, Any] = {"interrupt": pending[0], "interrupts": pending}
    elif status == "awaiting_input":
        data = dict(branchdoc.first_awaiting(root.doc) or {})
    else:
        data = {"resume_at": rfc3339(due) if due else None}

    async def write() -> bool:
        root.events.append(NewEvent(f"run.{status}", node, data))
        root.pure = False
        try:
            return bool(await root._checkpoint(RunStatus(status), None, due_at=due))
        except AnswersArrived as arrived:  # the branches answered go on (next cycle)
            for answer in arrived.answers:
                root.doc = take_answer(root, root.doc, answer)
            return True

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
    if len(encode_json(state)) > execution.engine.settings.max_state_bytes:
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

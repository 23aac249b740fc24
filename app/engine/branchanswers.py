"""Answers to paused branches (DESIGN §10): each goes to the branch (or branches) it is for.

An answer is routed into the run's document: the answered branch takes it when it next
runs (``BranchExecution``). What the API left for a paused run is routed when the run is
resumed (``route_resume``). An answer to a paused branch of a run that is still running
is left in the run row (``runs.answers``); the root execution takes it while the other
branches go on (``watch_answers``) and starts the answered branch again, or, when the
run was about to pause, goes on with it (``take_answer``, from ``branches.pause_run``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from app.engine import branchdoc, memory
from app.engine.branchdoc import PARALLEL
from app.engine.branchexec import BranchExecution, Live, ParallelRuntime, root_doc, write_locked
from app.engine.lifecycle import RunStatus
from app.engine.runner import RunExecution
from app.store import runs as run_store
from app.store.database import transaction
from app.store.events import NewEvent

# -- answers to paused branches while the run runs (``runs.answers``) ----------------------


def _answered_branches(doc: memory.Doc, answer: dict[str, Any]) -> list[str]:
    """The paused branches ``answer`` is for (a ``wake``: every suspended one), if they
    still wait for it."""
    found = []
    for branch_id, d, status in branchdoc.leaves(doc):
        if "response" in answer:
            if status == "interrupted" and d["interrupt"]["id"] == answer["interrupt_id"]:
                found.append(branch_id)
        elif "message" in answer:
            if status == "awaiting_input" and branch_id == answer.get("branch"):
                found.append(branch_id)
        elif status == "suspended":
            found.append(branch_id)
    return found


def take_answer(root: RunExecution, doc: memory.Doc, answer: dict[str, Any]) -> memory.Doc:
    """Route ``answer`` to its branches in ``doc`` (the next checkpoint holds it, and
    removes it from the run row); an answer no branch waits for any more is dropped."""
    root.taken.add(answer["id"])
    found = _answered_branches(doc, answer)
    if not found:
        return doc
    resume = {k: v for k, v in answer.items() if k != "id"}
    if "response" in answer:
        info = {"interrupt_id": answer["interrupt_id"]}
    else:
        info = resume.get("info", {})
    if "message" in answer:
        resume["branch"] = found[0]
    routed = route_resume(doc, "running" if "response" in answer else "suspended", resume)
    node = branchdoc.current_node(routed)
    for branch_id in found:
        root.events.append(NewEvent("branch.resumed", node, {"branch": branch_id, **info}))
    return routed


async def watch_answers(runtime: ParallelRuntime, live: Live) -> None:
    """While branches of ``live`` run: give each answer left in the run row to its
    paused branch and start that branch again (the others go on meanwhile)."""
    root = runtime.root
    signal = asyncio.Event()
    signal.set()  # answers left before this execution started (a recovery) are taken too
    root.engine.answer_signals[root.run_id] = signal
    try:
        while True:
            busy = [task for task in live.tasks.values() if not task.done()]
            if not busy:
                return
            waiter = asyncio.ensure_future(signal.wait())
            try:
                await asyncio.wait([*busy, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            signal.clear()
            await write_locked(runtime, lambda: _take_live(runtime, live))
    finally:
        if root.engine.answer_signals.get(root.run_id) is signal:
            del root.engine.answer_signals[root.run_id]


async def _take_live(runtime: ParallelRuntime, live: Live) -> None:
    root = runtime.root
    async with transaction(root.engine.sessions) as session:
        run = await run_store.get(session, root.run_id)
    answers = [a for a in (run.answers if run else None) or [] if a["id"] not in root.taken]
    restart: dict[str, BranchExecution] = {}
    for answer in answers:
        doc = root_doc(runtime)
        found = _answered_branches(doc, answer)
        children = {
            cid
            for cid in live.children
            for branch_id in found
            if (branch_id + ".").startswith(cid + ".")
        }
        tasks = [live.tasks.get(cid) for cid in children]
        if not children or any(task is not None and not task.done() for task in tasks):
            continue  # a nested branch whose parent still runs: taken when it stops
        routed = take_answer(root, doc, answer)
        section = routed["frames"][live.i][PARALLEL]
        for entry in section["branches"]:
            if entry["id"] in children:
                restart[entry["id"]] = live.children[entry["id"]] = await live.revive(entry)
    if not restart:
        return
    root.doc = root_doc(runtime)
    root.pure = False
    await root._checkpoint(RunStatus.RUNNING, None)
    for child in restart.values():
        live.start(child, runtime)


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
    if status in branchdoc.PAUSES:  # a timer (or POST /resume): the due waits end
        now = datetime.now(UTC)
        every = bool(resume.get("info", {}).get("requested"))

        def due(_: str, d: memory.Doc, st: str) -> bool:
            at = d.get("suspended", {}).get("due_at")
            return st == "suspended" and (
                every or (at is not None and datetime.fromisoformat(at) <= now)
            )

        return branchdoc.route(doc, due, resume)
    return doc

"""Parallel branches in the run's document (DESIGN §10).

A frame that fanned out holds a ``parallel`` section until its branches meet::

    {"from": <fan-out node>, "join": <join node> | None, "base": <state at the fan-out>,
     "branches": [{"id": "research", "doc": <branch document>}, ...]}   # in `to` order

A branch document has the shape of a run's document (``frames``, ``interrupt``,
``awaiting``...): its first frame starts as a copy of the fan-out's frame at the branch's
first node, with the state at the fan-out; further frames are subgraphs run inside the
branch, and a frame of a branch can fan out again (ids then compose: ``a.b``). It also
keeps ``written`` (state keys the branch's own nodes set), ``suspended`` (``{due_at}``
while a ``wait`` holds it) and ``resume`` (an answer routed to it, until it runs).

The frame's own ``node`` is the join node (None when the branches end) while the
section lasts. Everything a branch did is in its document, so a checkpoint holds every
branch's position and any worker can go on from it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

from app.engine import memory

PARALLEL = "parallel"

RUNNING, ARRIVED, ENDED = "running", "arrived", "ended"
PAUSES = ("interrupted", "awaiting_input", "suspended")


def section_index(doc: memory.Doc) -> int | None:
    """The index of the innermost frame, when it is running a parallel section."""
    frames = doc["frames"]
    return len(frames) - 1 if PARALLEL in frames[-1] else None


def branch_status(branch_doc: memory.Doc, join: str | None) -> str:
    if branch_doc.get("resume") is not None:  # answered: it goes on when it next runs
        return RUNNING
    if branch_doc.get("interrupt") is not None:
        return "interrupted"
    if branch_doc.get("awaiting") is not None:
        return "awaiting_input"
    if branch_doc.get("suspended") is not None:
        return "suspended"
    frames = branch_doc["frames"]
    if len(frames) == 1 and PARALLEL not in frames[0]:
        if frames[0]["node"] is None:
            return ENDED
        if frames[0]["node"] == join:
            return ARRIVED
    return RUNNING


def leaves(doc: memory.Doc) -> Iterator[tuple[str, memory.Doc, str]]:
    """Every branch that is not itself waiting for branches of its own, depth first in
    ``to`` order: (id, its document, its status)."""
    i = section_index(doc)
    if i is None:
        return
    section = doc["frames"][i][PARALLEL]
    for entry in section["branches"]:
        if section_index(entry["doc"]) is not None:
            yield from leaves(entry["doc"])
        else:
            yield entry["id"], entry["doc"], branch_status(entry["doc"], section["join"])


def pending_interrupts(doc: memory.Doc) -> list[dict[str, Any]]:
    if section_index(doc) is None:
        return [doc["interrupt"]] if doc.get("interrupt") else []
    return [d["interrupt"] for _, d, status in leaves(doc) if status == "interrupted"]


def interrupt_column(doc: memory.Doc) -> dict[str, Any] | list[dict[str, Any]] | None:
    """What the run row keeps of the pending interrupts: one object, or a list of them."""
    return column_of(pending_interrupts(doc))


def column_of(pending: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The ``interrupt`` column's value for these pending interrupts."""
    if not pending:
        return None
    return pending[0] if len(pending) == 1 else pending


def interrupts_of(column: Any) -> list[dict[str, Any]]:
    """The pending interrupts kept in a run row's ``interrupt`` column."""
    if column is None:
        return []
    return list(column) if isinstance(column, list) else [column]


def interrupt_schema(doc: memory.Doc, interrupt_id: str) -> Any:
    """The schema an answer to the pending interrupt ``interrupt_id`` must match."""
    if section_index(doc) is None:
        return doc.get("interrupt_schema")
    for _, d, status in leaves(doc):
        if status == "interrupted" and d["interrupt"]["id"] == interrupt_id:
            return d.get("interrupt_schema")
    return None


def awaiting_branches(doc: memory.Doc) -> list[str]:
    return [branch_id for branch_id, _, status in leaves(doc) if status == "awaiting_input"]


def first_awaiting(doc: memory.Doc, answered: Collection[str] = ()) -> dict[str, Any] | None:
    """The first branch awaiting input (not one of the ``answered`` ones), or the run's
    own ``awaiting``."""
    if section_index(doc) is None:
        awaiting: dict[str, Any] | None = doc.get("awaiting")
        return awaiting
    for branch_id, d, status in leaves(doc):
        if status == "awaiting_input" and branch_id not in answered:
            return {**d["awaiting"], "branch": branch_id}
    return None


def earliest_due(doc: memory.Doc) -> datetime | None:
    dues = [
        datetime.fromisoformat(d["suspended"]["due_at"])
        for _, d, status in leaves(doc)
        if status == "suspended" and d["suspended"].get("due_at")
    ]
    return min(dues) if dues else None


def pause_status(doc: memory.Doc) -> str | None:
    """How a run whose branches can no longer go on is paused (DESIGN §10), or None when
    some branch can go on."""
    statuses = {status for _, _, status in leaves(doc)}
    if RUNNING in statuses:
        return None
    for status in PAUSES:
        if status in statuses:
            return status
    return None


def current_node(doc: memory.Doc) -> str | None:
    """The node the run is at: the innermost frame's next node, or, inside a fan-out,
    the first active branch's (the first paused one when none is active); inside a map,
    the map's node (its items run the nodes of another workflow)."""
    i = section_index(doc)
    if i is None:
        inner = len(doc["frames"]) - 1
        return memory.node_path(doc, inner, doc["frames"][inner]["node"])
    section = doc["frames"][i][PARALLEL]
    if section.get("kind") != "map":
        found = [(e["doc"], branch_status(e["doc"], section["join"])) for e in section["branches"]]
        for d, status in [*[x for x in found if x[1] == RUNNING], *found]:
            if status not in (ARRIVED, ENDED):
                return current_node(d)  # (a branch with branches, or a map, of its own)
    return memory.node_path(doc, i, doc["frames"][i]["node"])


def patch_state(doc: memory.Doc, patch: Any) -> memory.Doc:
    """Apply a JSON merge patch to the run's state, and to every branch's view of it."""
    if not patch:
        return doc
    top = doc["frames"][0]
    doc = memory.replace_frame(doc, 0, state=memory.merge_patch(top["state"], patch))
    if PARALLEL not in top:
        return doc
    section = doc["frames"][0][PARALLEL]
    if section.get("kind") == "map":  # items run another workflow, with its own state
        return memory.replace_frame(
            doc, 0, **{PARALLEL: {**section, "base": memory.merge_patch(section["base"], patch)}}
        )
    branches = [{**entry, "doc": patch_state(entry["doc"], patch)} for entry in section["branches"]]
    section = {**section, "base": memory.merge_patch(section["base"], patch), "branches": branches}
    return memory.replace_frame(doc, 0, **{PARALLEL: section})


def route(doc: memory.Doc, pick: Any, resume: dict[str, Any]) -> memory.Doc:
    """Give ``resume`` to the branches ``pick(id, branch doc, status)`` chooses: each
    takes it when it next runs (``BranchExecution``)."""
    i = section_index(doc)
    if i is None:
        return doc
    section = doc["frames"][i][PARALLEL]
    branches = []
    for entry in section["branches"]:
        bdoc = entry["doc"]
        if section_index(bdoc) is not None:
            bdoc = route(bdoc, pick, resume)
        else:
            status = branch_status(bdoc, section["join"])
            if status in PAUSES and pick(entry["id"], bdoc, status):
                bdoc = {**bdoc, "resume": {**resume, "status": status}}
        branches.append({**entry, "doc": bdoc})
    return memory.replace_frame(doc, i, **{PARALLEL: {**section, "branches": branches}})

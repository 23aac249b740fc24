"""The run's memory: the document a checkpoint stores.

``{"frames": [frame, ...], "interrupt": obj|None, "awaiting": obj|None, ...}``. The
first frame is the run's own workflow; each further frame is a subgraph being run
inside the node of the frame before it. A frame holds ``node`` (what runs next, None
when the frame is done), ``last``, ``state``, ``nodes`` (outputs by node id),
``visits``, ``messages`` (the session history), ``handoff`` and ``handoff_depth``.

Documents are never mutated in place: every change builds new dicts along the changed
path, so unchanged parts stay shared and checkpoint deltas are cheap to compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.templates import TemplateEngine
from app.schemas.definition import WorkflowDefinition
from app.store.checkpoints import CheckpointChain
from app.store.models import Run

Doc = dict[str, Any]
Frame = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Handover:
    """A run queued *for* this process (``run_store.reservation``), with what the
    transaction that queued it read or wrote: its first execution here need not read it
    back. ``stopped`` is how the run last stopped (its head checkpoint's status)."""

    run: Run
    checkpoint_id: str
    doc: Doc
    definitions: list[WorkflowDefinition]  # the workflow of each frame of ``doc``
    chain: CheckpointChain
    stopped: str = "queued"


def new_frame(
    definition: WorkflowDefinition,
    inputs: Mapping[str, Any],
    templates: TemplateEngine,
    /,
    **extra: Any,
) -> Frame:
    """A frame at the entry node, its state rendered from the definition over ``inputs``.

    Raises TemplateError when the initial state does not render.
    """
    state = templates.render(definition.state, {"inputs": inputs})
    entry = definition.entry_node
    return {
        "node": entry,
        "last": None,
        "state": state,
        "nodes": {},
        "visits": {entry: 1},
        "messages": [],
        "handoff": None,
        "handoff_depth": 0,
        **extra,
    }


def new_document(frame: Frame) -> Doc:
    return {"frames": [frame], "interrupt": None, "awaiting": None}


def node_path(doc: Doc, index: int, node_id: str | None) -> str | None:
    """``parent/inner`` names for nodes of subgraph frames."""
    if node_id is None:
        return None
    parents = [frame["parent_node"] for frame in doc["frames"][1 : index + 1]]
    return "/".join([*parents, node_id])


def top_state(doc: Doc) -> Any:
    return doc["frames"][0]["state"]


def pending_after(doc: Doc) -> dict[str, Any] | None:
    """The document's unanswered ``interrupt_after`` interrupt, if it holds one: its node
    has run, so a run going on from the document (a resume without an answer, a fork,
    time travel) asks it again rather than running the node again."""
    interrupt = doc.get("interrupt")
    if isinstance(interrupt, dict) and interrupt.get("kind") == "interrupt_after":
        return interrupt
    return None


# in a frame: the node whose step completed but whose edge was not chosen (the run failed
# choosing it); a resume chooses again instead of running the step again
ROUTE_AGAIN = "route_again"


def replace_frame(doc: Doc, index: int, **changes: Any) -> Doc:
    frames = list(doc["frames"])
    frames[index] = {**frames[index], **changes}
    return {**doc, "frames": frames}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, returning a new value."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result

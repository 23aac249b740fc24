"""Choosing the next node: conditional edges in order, then the default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.templates import TemplateEngine
from app.schemas.definition import WorkflowDefinition
from app.store.events import NewEvent


@dataclass(frozen=True, slots=True)
class EdgeChoice:
    next_node: str | None  # None: the node has no outgoing edges, the frame ends
    events: list[NewEvent]
    matched: bool  # False: edges exist but none matched (no_matching_edge)
    branches: list[str] | None = None  # a fan-out edge was taken: its targets, in order
    edge_index: int | None = None  # the index of the fan-out edge in the definition


def _taken(index: int, to: str | list[str], events: list[NewEvent]) -> EdgeChoice:
    if isinstance(to, list):
        return EdgeChoice(None, events, True, branches=list(to), edge_index=index)
    return EdgeChoice(to, events, True)


def choose_next(
    definition: WorkflowDefinition,
    node_id: str,
    scope: Mapping[str, Any],
    templates: TemplateEngine,
    event_node: str,
) -> EdgeChoice:
    """Raises TemplateError when a ``when`` expression fails."""
    outgoing = [(i, edge) for i, edge in enumerate(definition.edges) if edge.from_ == node_id]
    if not outgoing:
        return EdgeChoice(None, [], True)
    events: list[NewEvent] = []
    for i, edge in outgoing:
        if edge.when is None:
            continue
        result = bool(templates.evaluate(edge.when, scope))
        events.append(
            NewEvent(
                "branch.evaluated",
                event_node,
                {"from": node_id, "to": edge.to, "condition": edge.when, "result": result},
            )
        )
        if result:
            return _taken(i, edge.to, events)
    for i, edge in outgoing:
        if edge.when is None:
            events.append(
                NewEvent(
                    "branch.evaluated",
                    event_node,
                    {"from": node_id, "to": edge.to, "condition": None, "result": True},
                )
            )
            return _taken(i, edge.to, events)
    return EdgeChoice(None, events, False)

"""Where the branches of a fan-out meet (DESIGN §10), worked out from the graph alone.

A branch goes from a target of a fan-out edge along the edges that do not close a loop
until it reaches a node with ``join: all`` (it *arrives* there) or a node without
outgoing edges (it *ends*). A fan-out nested inside a branch is passed over as a whole:
the branch goes on from the nested fan-out's own join. Validation refuses a fan-out
whose branches can stop at more than one place, or can both reach a node that is not a
join (they would meet there without joining); the runner asks where they meet.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.schemas.definition import WorkflowDefinition

END = None  # the place of a branch that ends without a join


@dataclass(frozen=True, slots=True)
class Meeting:
    """Where a fan-out's branches stop: ``{join id}``, ``{END}``, or (invalid) several;
    ``shared``: nodes other than a join that two branches can both reach (invalid: the
    branches would meet there, and run it and what follows once each)."""

    places: frozenset[str | None]
    shared: frozenset[str] = frozenset()

    @property
    def join(self) -> str | None:
        """The one join node, or None when the branches end (only for a valid meeting)."""
        return next(iter(self.places))

    @property
    def valid(self) -> bool:
        return len(self.places) == 1 and not self.shared


class JoinAnalysis:
    """The meeting place of each fan-out edge of one definition (computed once each)."""

    def __init__(self, definition: WorkflowDefinition) -> None:
        self._d = definition
        self._meetings: dict[int, Meeting] = {}
        self._outgoing: dict[str, list[int]] = {n: [] for n in definition.nodes}
        for i, edge in enumerate(definition.edges):
            if edge.from_ in self._outgoing and not edge.loop:
                self._outgoing[edge.from_].append(i)

    def meeting(self, edge_index: int, _active: frozenset[int] = frozenset()) -> Meeting:
        if edge_index in self._meetings:
            return self._meetings[edge_index]
        edge = self._d.edges[edge_index]
        places: set[str | None] = set()
        reached: set[str] = set()
        shared: set[str] = set()
        for target in edge.targets:
            if target in self._d.nodes:
                stops, nodes = self._stops(target, _active | {edge_index})
                places |= stops
                shared |= reached & nodes
                reached |= nodes
        meeting = Meeting(frozenset(places), frozenset(shared))
        self._meetings[edge_index] = meeting
        return meeting

    def _stops(self, start: str, active: frozenset[int]) -> tuple[set[str | None], set[str]]:
        """The joins (and END) a branch starting at ``start`` can stop at, and the nodes
        it can run on the way (a nested fan-out's own branches and join excepted)."""
        stops: set[str | None] = set()
        nodes: set[str] = set()
        seen: set[tuple[str, bool]] = set()
        todo: list[tuple[str, bool]] = [(start, False)]  # (node, passing through its join)
        while todo:
            node_id, through = todo.pop()
            if (node_id, through) in seen:
                continue
            seen.add((node_id, through))
            if not through and self._d.nodes[node_id].join == "all":
                stops.add(node_id)
                continue
            if not through:
                nodes.add(node_id)
            edges = self._outgoing[node_id]
            if not edges:
                stops.add(END)
            for i in edges:
                edge = self._d.edges[i]
                if not edge.fans_out:
                    if edge.to in self._d.nodes:
                        todo.append((edge.targets[0], False))
                    continue
                if i in active:  # a fan-out inside its own branch: only through a loop
                    continue
                for place in self.meeting(i, active).places:
                    if place is END:
                        stops.add(END)
                    else:
                        todo.append((place, True))
        return stops, nodes

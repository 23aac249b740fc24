"""Validation of workflow definitions: structure, then the graph and template rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import ValidationError

from app.engine.templates import TemplateEngine, TemplateError
from app.errors import Invalid, error_item
from app.schemas.definition import WorkflowDefinition
from app.steps.registry import StepRegistry

Loc = list[str | int]


@dataclass(frozen=True, slots=True)
class DefinitionLimits:
    max_bytes: int = 1 << 20
    max_nodes: int = 1000


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_hash(raw: dict[str, Any]) -> str:
    """Content hash: key order, and YAML versus JSON of the same content, do not matter."""
    return hashlib.sha256(canonical_json(raw).encode()).hexdigest()


def pydantic_errors(exc: ValidationError, prefix: Loc = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return [error_item([*prefix, *err["loc"]], err["msg"], err["type"]) for err in exc.errors()]


def schema_errors(schema: Any, loc: Loc) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return [error_item(loc, "a JSON Schema must be an object", "invalid_schema")]
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        path = [*loc, *exc.path]
        return [error_item(path, f"invalid JSON Schema: {exc.message}", "invalid_schema")]
    return []


class DefinitionValidator:
    def __init__(
        self, registry: StepRegistry, templates: TemplateEngine, limits: DefinitionLimits
    ) -> None:
        self._registry = registry
        self._templates = templates
        self._limits = limits

    def validate(self, raw: Any) -> tuple[WorkflowDefinition | None, list[dict[str, Any]]]:
        if not isinstance(raw, dict):
            return None, [error_item([], "a workflow definition must be an object")]
        size = len(canonical_json(raw).encode())
        if size > self._limits.max_bytes:
            msg = f"definition is {size} bytes; the limit is {self._limits.max_bytes}"
            return None, [error_item([], msg, "too_large")]
        nodes = raw.get("nodes")
        if isinstance(nodes, dict) and len(nodes) > self._limits.max_nodes:
            msg = f"{len(nodes)} nodes; the limit is {self._limits.max_nodes}"
            return None, [error_item(["nodes"], msg, "too_many_nodes")]
        try:
            definition = WorkflowDefinition.model_validate(raw)
        except ValidationError as exc:
            return None, pydantic_errors(exc)
        errors = [
            *self._agent_errors(definition, raw),
            *self._node_errors(definition),
            *self._edge_errors(definition),
            *self._template_errors(definition),
        ]
        if definition.inputs is not None:
            errors += schema_errors(definition.inputs, ["inputs"])
        if not errors:
            errors += self._graph_errors(definition)
        return (None if errors else definition), errors

    def parse(self, raw: Any) -> WorkflowDefinition:
        """Validate or raise a 422 listing every error."""
        definition, errors = self.validate(raw)
        if definition is None:
            raise Invalid(
                "the workflow definition is invalid", code="invalid_definition", errors=errors
            )
        return definition

    def _agent_errors(self, d: WorkflowDefinition, raw: dict[str, Any]) -> list[dict[str, Any]]:
        errors = []
        if isinstance(d.agents, list):
            seen: set[str] = set()
            for i, item in enumerate(d.agents):
                if item.id in seen:
                    errors.append(
                        error_item(
                            ["agents", i, "id"], f"duplicate agent id {item.id!r}", "duplicate"
                        )
                    )
                seen.add(item.id)
        agents = d.agent_map
        for agent_id, agent in agents.items():
            for i, target in enumerate(agent.handoff_targets or []):
                if target not in agents:
                    loc: Loc = ["agents", agent_id, "handoff_targets", i]
                    errors.append(error_item(loc, f"unknown agent {target!r}", "unknown_agent"))
        bound: dict[str, str] = {}
        for node_id, node in d.nodes.items():
            if node.agent is None:
                continue
            if node.agent not in agents:
                loc = ["nodes", node_id, "agent"]
                errors.append(
                    error_item(
                        loc, f"agent {node.agent!r} is not declared in `agents`", "unknown_agent"
                    )
                )
            elif node.agent in bound:
                loc = ["nodes", node_id, "agent"]
                msg = f"agent {node.agent!r} is already bound to node {bound[node.agent]!r}"
                errors.append(error_item(loc, msg, "duplicate"))
            else:
                bound[node.agent] = node_id
        return errors

    def _node_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []
        if d.entry is not None and d.entry not in d.nodes:
            errors.append(
                error_item(["entry"], f"entry node {d.entry!r} does not exist", "unknown_node")
            )
        for node_id, node in d.nodes.items():
            if not self._registry.knows(node.step):
                msg = f"unknown step type {node.step!r}; known: {', '.join(self._registry.names)}"
                errors.append(error_item(["nodes", node_id, "step"], msg, "unknown_step"))
            schema = node.with_.get("schema") if node.step == "interrupt" else None
            if schema is not None and not self._templates.has_template(schema):
                errors += schema_errors(schema, ["nodes", node_id, "with", "schema"])
        return errors

    def _edge_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []
        for i, edge in enumerate(d.edges):
            for field, node_id in (("from", edge.from_), ("to", edge.to)):
                if node_id not in d.nodes:
                    msg = f"edge {field} unknown node {node_id!r}"
                    errors.append(error_item(["edges", i, field], msg, "unknown_node"))
        return errors

    def _template_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []

        def check(loc: Loc, value: Any) -> None:
            for path, source in self._templates.iter_templates(value, loc):
                try:
                    self._templates.check(source)
                except TemplateError as exc:
                    errors.append(
                        error_item(path, f"template does not parse: {exc.message}", "bad_template")
                    )

        check(["state"], d.state)
        check(["output"], d.output)
        for node_id, node in d.nodes.items():
            check(["nodes", node_id, "with"], node.with_)
            check(["nodes", node_id, "set"], node.set)
        for i, edge in enumerate(d.edges):
            if edge.when is not None:
                try:
                    self._templates.check_expression(edge.when)
                except TemplateError as exc:
                    loc: Loc = ["edges", i, "when"]
                    errors.append(
                        error_item(loc, f"expression does not parse: {exc.message}", "bad_template")
                    )
        return errors

    def _graph_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []
        outgoing: dict[str, list[tuple[int, str, bool]]] = {n: [] for n in d.nodes}
        for i, edge in enumerate(d.edges):
            outgoing[edge.from_].append((i, edge.to, edge.loop))

        # Reachability: from the entry, and from every agent-bound node (a handoff can route there).
        seen: set[str] = set()
        todo = [d.entry_node, *(n for n, node in d.nodes.items() if node.agent is not None)]
        while todo:
            node_id = todo.pop()
            if node_id not in seen:
                seen.add(node_id)
                todo.extend(to for _, to, _ in outgoing[node_id])
        for node_id in d.nodes:
            if node_id not in seen:
                errors.append(
                    error_item(
                        ["nodes", node_id], f"node {node_id!r} is unreachable", "unreachable"
                    )
                )

        # Every cycle must be closed by an edge marked `loop: true`.
        WHITE, GREY, BLACK = 0, 1, 2
        color = dict.fromkeys(d.nodes, WHITE)
        for start in d.nodes:
            if color[start] != WHITE:
                continue
            stack: list[tuple[str, int]] = [(start, 0)]
            color[start] = GREY
            while stack:
                node_id, k = stack[-1]
                edges = [e for e in outgoing[node_id] if not e[2]]
                if k < len(edges):
                    stack[-1] = (node_id, k + 1)
                    i, to, _ = edges[k]
                    if color[to] == GREY:
                        msg = (
                            f"edge {node_id!r} → {to!r} closes a cycle; "
                            "mark it `loop: true` if the revisit is intended"
                        )
                        errors.append(error_item(["edges", i], msg, "unmarked_cycle"))
                    elif color[to] == WHITE:
                        color[to] = GREY
                        stack.append((to, 0))
                else:
                    color[node_id] = BLACK
                    stack.pop()
        return errors

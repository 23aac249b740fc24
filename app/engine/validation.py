"""Validation of workflow definitions: structure, then the graph and template rules."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.engine import agent_checks, mapconfig
from app.engine.joins import END, JoinAnalysis
from app.engine.schema_checks import schema_errors
from app.engine.templates import TemplateEngine, TemplateError
from app.errors import Invalid, error_item
from app.schemas.definition import FORM_TAGS, NODE_ID_PATTERN, WorkflowDefinition
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


def pydantic_errors(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        loc = [
            part for i, part in enumerate(loc)
            if not (i > 0 and part in FORM_TAGS.get(str(loc[i - 1]), ()))
        ]  # fmt: skip
        errors.append(error_item([*prefix, *loc], err["msg"], err["type"]))
    return errors


_NODE_ID = re.compile(NODE_ID_PATTERN)


class DefinitionValidator:
    def __init__(
        self, registry: StepRegistry, templates: TemplateEngine, limits: DefinitionLimits
    ) -> None:
        self._registry = registry
        self._templates = templates
        self._limits = limits

    def validate(self, raw: Any) -> tuple[WorkflowDefinition | None, list[dict[str, Any]]]:
        """The definition, or None and every error found.

        ``raw`` is completed in place: without an ``entry`` it gets the id of its first
        node, so that what is hashed and stored says which node that was. Neither the
        content hash (canonical JSON sorts keys) nor every store (Postgres JSONB orders
        keys its own way) keeps the order of ``nodes``.
        """
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
        if isinstance(nodes, dict) and nodes and raw.get("entry") is None:
            raw["entry"] = next(iter(nodes))
        try:
            definition = WorkflowDefinition.model_validate(raw)
        except ValidationError as exc:
            return None, pydantic_errors(exc)
        errors = [
            *agent_checks.binding_errors(definition),
            *agent_checks.model_errors(definition, self._templates),
            *self._tool_errors(definition),
            *self._node_errors(definition),
            *self._edge_errors(definition),
            *self._template_errors(definition),
            *self._graph_errors(definition),
            *self._fanout_errors(definition),
        ]
        if definition.inputs is not None:
            errors += schema_errors(definition.inputs, ["inputs"])
        return (None if errors else definition), errors

    def parse(self, raw: Any) -> WorkflowDefinition:
        """Validate or raise a 422 listing every error."""
        definition, errors = self.validate(raw)
        if definition is None:
            raise Invalid(
                "the workflow definition is invalid", code="invalid_definition", errors=errors
            )
        return definition

    def _tool_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        """Keys of a tool's ``http`` (the ``with`` of an http step) it does not take."""
        return [
            error
            for name, tool in d.tools.items()
            if tool.http is not None
            for error in self._config_key_errors(name, "http", tool.http, ["tools", name, "http"])
        ]

    def _node_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []
        if d.entry is not None and d.entry not in d.nodes:
            errors.append(
                error_item(["entry"], f"entry node {d.entry!r} does not exist", "unknown_node")
            )
        for node_id, node in d.nodes.items():
            if not _NODE_ID.match(node_id):
                msg = "a node id is 1-100 letters, digits, '_' or '-', not starting with '-'"
                errors.append(error_item(["nodes", node_id], msg, "invalid_node_id"))
            if not self._registry.knows(node.step):
                msg = f"unknown step type {node.step!r}; known: {', '.join(self._registry.names)}"
                errors.append(error_item(["nodes", node_id, "step"], msg, "unknown_step"))
            else:
                errors += self._config_key_errors(node_id, node.step, node.with_)
            if node.step == "map":
                errors += self._map_errors(node_id, node.with_)
            schema = node.with_.get("schema") if node.step == "interrupt" else None
            if schema is not None and not self._templates.has_template(schema):
                errors += schema_errors(schema, ["nodes", node_id, "with", "schema"])
        return errors

    def _map_errors(self, node_id: str, config: dict[str, Any]) -> list[dict[str, Any]]:
        """A map's unknown settings, and the first problem of those written as they are."""
        loc: Loc = ["nodes", node_id, "with"]
        errors = [
            error_item([*loc, key], f"map takes no `{key}` (it takes {sorted(mapconfig.KEYS)})",
                       "unknown_key")
            for key in config if key not in mapconfig.KEYS
        ]  # fmt: skip
        templated = {k for k, v in config.items() if self._templates.has_template(v)}
        problem = mapconfig.config_problem(config, templated)
        if problem is not None:
            key, error = problem
            errors.append(error_item([*loc, key], error.message, error.code))
        return errors

    def _config_key_errors(
        self, node_id: str, step_name: str, config: dict[str, Any], at: Loc | None = None
    ) -> list[dict[str, Any]]:
        """Keys of ``with`` the node's step does not take, for a step that says which it
        takes (``config_keys``): refused when stored rather than failing the run."""
        keys: frozenset[str] | None = None
        if step_name in self._registry.step_names:
            keys = getattr(self._registry.get(step_name), "config_keys", None)
        if keys is None:
            return []
        known = ", ".join(sorted(keys))
        return [
            error_item(
                [*(at or ["nodes", node_id, "with"]), key],
                f"the {step_name} step takes no `{key}` (it takes {known})",
                "unknown_key",
            )
            for key in config
            if key not in keys
        ]

    def _edge_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []
        for i, edge in enumerate(d.edges):
            if edge.from_ not in d.nodes:
                msg = f"edge from unknown node {edge.from_!r}"
                errors.append(error_item(["edges", i, "from"], msg, "unknown_node"))
            for k, node_id in enumerate(edge.targets):
                loc: Loc = ["edges", i, "to", k] if edge.fans_out else ["edges", i, "to"]
                if node_id not in d.nodes:
                    msg = f"edge to unknown node {node_id!r}"
                    errors.append(error_item(loc, msg, "unknown_node"))
                elif node_id in edge.targets[:k]:
                    msg = f"a fan-out lists node {node_id!r} twice"
                    errors.append(error_item(loc, msg, "duplicate"))
        return errors

    def _fanout_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        """The branches of each fan-out must meet at one join node, or all end."""
        if any(edge.from_ not in d.nodes or set(edge.targets) - set(d.nodes) for edge in d.edges):
            return []  # unknown nodes are reported on their own
        errors = []
        analysis = JoinAnalysis(d)
        for i, edge in enumerate(d.edges):
            if not edge.fans_out:
                continue
            if d.nodes[edge.from_].interrupt_after:
                msg = (
                    f"node {edge.from_!r} fans out, so it cannot pause after it ran; "
                    "use `interrupt_before` on the branches' first nodes"
                )
                loc: Loc = ["nodes", edge.from_, "interrupt_after"]
                errors.append(error_item(loc, msg, "interrupt_after_fan_out"))
            meeting = analysis.meeting(i)
            if not meeting.valid:
                places = sorted("the end" if p is END else repr(p) for p in meeting.places)
                msg = (
                    f"the branches of fan-out {edge.from_!r} -> {edge.targets} must meet at "
                    f"one `join: all` node or all end; they stop at {', '.join(places)}"
                )
                if meeting.shared:
                    met = ", ".join(repr(n) for n in sorted(meeting.shared))
                    msg += f", and meet outside a join at {met}"
                errors.append(error_item(["edges", i, "to"], msg, "unjoined_branches"))
        return errors

    def _template_errors(self, d: WorkflowDefinition) -> list[dict[str, Any]]:
        errors = []

        def check(loc: Loc, value: Any, *, secrets: bool = False) -> None:
            """``secrets``: whether the templates there have ``secrets`` in scope."""
            for path, source in self._templates.iter_templates(value, loc):
                try:
                    self._templates.check(source)
                except TemplateError as exc:
                    errors.append(
                        error_item(path, f"template does not parse: {exc.message}", "bad_template")
                    )
                    continue
                for msg in self._templates.secret_problems(source, allowed=secrets):
                    errors.append(error_item(path, msg, "secret_not_allowed"))

        check(["state"], d.state)
        for name, tool in d.tools.items():
            check(["tools", name, "http"], tool.http, secrets=True)
        for name, model in d.models.items():
            check(["models", name, "api_key"], model.api_key, secrets=True)
        for agent_id, agent in d.agent_map.items():
            check(["agents", agent_id, "system_prompt"], agent.system_prompt)
        check(["output"], d.output)
        for node_id, node in d.nodes.items():
            # a subgraph's and a map's `with` become stored inputs: no secrets there
            inputs = node.step in ("subgraph", "map")
            check(["nodes", node_id, "with"], node.with_, secrets=not inputs)
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
        """Reachability and unmarked cycles, over the edges between known nodes."""
        errors = []
        outgoing: dict[str, list[tuple[int, str, bool]]] = {n: [] for n in d.nodes}
        for i, edge in enumerate(d.edges):
            for to in edge.targets:
                if edge.from_ in d.nodes and to in d.nodes:
                    outgoing[edge.from_].append((i, to, edge.loop))

        # Reachable: from the entry, and from every agent-bound node (a handoff can route
        # there). With an unknown entry only the agent-bound roots are left; the entry error
        # is reported on its own, so unreachability is then not reported at all.
        roots = [n for n, node in d.nodes.items() if node.agent is not None]
        if d.entry_node in d.nodes:
            seen: set[str] = set()
            todo = [d.entry_node, *roots]
            while todo:
                node_id = todo.pop()
                if node_id not in seen:
                    seen.add(node_id)
                    todo.extend(to for _, to, _ in outgoing[node_id] if to not in seen)
            for node_id in d.nodes:
                if node_id not in seen:
                    msg = (
                        f"node {node_id!r} is unreachable: no edge leads to it from the entry "
                        f"node {d.entry_node!r} and it is bound to no agent"
                    )
                    errors.append(error_item(["nodes", node_id], msg, "unreachable"))

        # Every cycle must be closed by an edge marked `loop: true`: without those edges the
        # graph is acyclic. Depth-first, iterative, each edge looked at once.
        forward = {n: [e for e in edges if not e[2]] for n, edges in outgoing.items()}
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(d.nodes, white)
        for start in d.nodes:
            if color[start] != white:
                continue
            color[start] = grey
            stack: list[tuple[str, int]] = [(start, 0)]
            while stack:
                node_id, k = stack[-1]
                edges = forward[node_id]
                if k == len(edges):
                    color[node_id] = black
                    stack.pop()
                    continue
                stack[-1] = (node_id, k + 1)
                i, to, _ = edges[k]
                if color[to] == grey:
                    msg = (
                        f"edge {node_id!r} -> {to!r} closes a cycle; mark it `loop: true` "
                        "if the revisit is intended"
                    )
                    errors.append(error_item(["edges", i], msg, "unmarked_cycle"))
                elif color[to] == white:
                    color[to] = grey
                    stack.append((to, 0))
        return errors

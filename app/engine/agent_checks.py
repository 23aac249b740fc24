"""Static checks of a definition's agents, models and tools (DESIGN §9).

Run by the definition validator after the document's structure is known to be right:
what is declared must be used consistently (one node per agent, known handoff targets,
models and tools), and what is written as-is in an agent node's ``with`` must be valid.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from app.agents.setup import AgentWith
from app.agents.tools import TOOL_ENTRY_POINT_GROUP, plugin_installed
from app.engine.schema_checks import schema_errors
from app.engine.templates import TemplateEngine
from app.errors import error_item
from app.schemas.definition import PROMPT_REF_PATTERN, TOOL_NAME_PATTERN, WorkflowDefinition

Loc = list[str | int]

_PROMPT_REF = re.compile(PROMPT_REF_PATTERN)
_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
# tools the agent step itself gives a model (DESIGN §9); no declared tool may take their names
BUILTIN_TOOLS = frozenset({"transfer_to_agent", "ask_human", "end_session"})


def binding_errors(d: WorkflowDefinition) -> list[dict[str, Any]]:
    """Agents declared twice, bound to two nodes, or handing off to an unknown agent."""
    errors = []
    if isinstance(d.agents, list):
        seen: set[str] = set()
        for i, item in enumerate(d.agents):
            if item.id in seen:
                errors.append(
                    error_item(["agents", i, "id"], f"duplicate agent id {item.id!r}", "duplicate")
                )
            seen.add(item.id)
    # A node's `agent: X` binds X whether or not `agents:` declares it; a declaration
    # only adds options (handoff targets, approval).
    agents = d.agent_map
    bound: dict[str, str] = {}
    for node_id, node in d.nodes.items():
        if node.agent is None:
            continue
        if node.agent in bound:
            loc: Loc = ["nodes", node_id, "agent"]
            msg = f"agent {node.agent!r} is already bound to node {bound[node.agent]!r}"
            errors.append(error_item(loc, msg, "duplicate"))
        else:
            bound[node.agent] = node_id
    for agent_id, agent in agents.items():
        for i, target in enumerate(agent.handoff_targets or []):
            if target not in agents and target not in bound:
                loc = ["agents", agent_id, "handoff_targets", i]
                msg = f"unknown agent {target!r}: neither declared in `agents` nor bound by a node"
                errors.append(error_item(loc, msg, "unknown_agent"))
    return errors


def model_errors(d: WorkflowDefinition, templates: TemplateEngine) -> list[dict[str, Any]]:
    """Tool names, schemas and plugins, agents' models and tools, agent nodes' settings."""
    errors = []
    for name, tool in d.tools.items():
        if not _TOOL_NAME.match(name) or name in BUILTIN_TOOLS:
            msg = (
                "a tool name is 1-64 letters, digits, '_' or '-', and not one of "
                f"{sorted(BUILTIN_TOOLS)}"
            )
            errors.append(error_item(["tools", name], msg, "invalid_tool_name"))
        errors += schema_errors(tool.parameters, ["tools", name, "parameters"])
        if tool.plugin is not None and not plugin_installed(tool.plugin):
            msg = f"no tool plugin {tool.plugin!r} is installed (entry-point group {TOOL_ENTRY_POINT_GROUP})"
            errors.append(error_item(["tools", name, "plugin"], msg, "unknown_plugin"))
    agents = d.agent_map
    for agent_id, agent in agents.items():
        loc: Loc = ["agents", agent_id, "model"]
        if isinstance(agent.model, str) and agent.model not in d.models:
            msg = f"unknown model {agent.model!r}; declared: {sorted(d.models)}"
            errors.append(error_item(loc, msg, "unknown_model"))
        for i, tool_name in enumerate(agent.tools):
            if tool_name not in d.tools:
                msg = f"unknown tool {tool_name!r}; declared: {sorted(d.tools)}"
                errors.append(error_item(["agents", agent_id, "tools", i], msg, "unknown_tool"))
    for node_id, node in d.nodes.items():
        if node.step == "agent":
            errors += _agent_node_errors(d, node_id, templates)
    return errors


def _agent_node_errors(
    d: WorkflowDefinition, node_id: str, templates: TemplateEngine
) -> list[dict[str, Any]]:
    node = d.nodes[node_id]
    agents = d.agent_map
    errors = []
    loc: Loc = ["nodes", node_id, "agent"]
    if node.agent is None:
        msg = "a `step: agent` node must be bound to an agent (`agent:`)"
        errors.append(error_item(loc, msg, "agent_required"))
    elif node.agent not in agents or agents[node.agent].model is None:
        # also when `agents` does not declare it: the model comes from there
        msg = f"agent {node.agent!r} has no `model`: a `step: agent` node needs one"
        errors.append(error_item(loc, msg, "model_required"))
    for key in node.with_:
        if key not in AgentWith.model_fields:
            msg = f"unknown setting {key!r}; known: {sorted(AgentWith.model_fields)}"
            errors.append(error_item(["nodes", node_id, "with", key], msg, "unknown_field"))
    # the settings written as they are (a template is checked once rendered)
    literal = {k: v for k, v in node.with_.items()
               if k in AgentWith.model_fields and not templates.has_template(v)}  # fmt: skip
    try:
        AgentWith.model_validate(literal)
    except ValidationError as exc:
        for item in exc.errors():
            where: Loc = ["nodes", node_id, "with", *item["loc"]]
            errors.append(error_item(where, item["msg"], "invalid_step_config"))
    ref = node.with_.get("prompt_ref")
    if ref is not None and not (
        isinstance(ref, str) and (_PROMPT_REF.match(ref) or templates.has_template(ref))
    ):
        msg = "a prompt reference is `name` or `name@<version>`"
        errors.append(
            error_item(["nodes", node_id, "with", "prompt_ref"], msg, "invalid_prompt_ref")
        )
    return errors

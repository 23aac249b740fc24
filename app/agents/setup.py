"""What one execution of an agent step works with: the agent's settings from the
definition, the node's ``with``, the tools offered to the model, and the opening of the
conversation (system prompt, earlier messages, the user turn)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from app.agents.providers import Message, ToolSpec
from app.schemas.definition import Agent, ModelConfig, ToolDef, WorkflowDefinition
from app.steps.base import StepContext
from app.steps.http import describe_validation_error

HANDOFF_MESSAGES = 20  # how much of a conversation a handoff carries (DESIGN §9)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(pattern="^(user|assistant)$")
    content: str


class AgentWith(BaseModel):
    """The ``with`` of a ``step: agent`` node."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    prompt_ref: str | None = None
    messages: list[ChatMessage] = Field(default_factory=list)
    session: StrictBool = False
    exit_commands: list[str] = Field(default_factory=lambda: ["/done"])
    max_turns: int | None = Field(default=None, ge=1)  # user turns of a session


def transfer_parameters(targets: list[str] | None = None) -> dict[str, Any]:
    """``transfer_to_agent``'s arguments. The model is offered the ``targets`` as an enum;
    a call is checked without it, so that a transfer to another agent is a handoff the
    runner refuses (``handoff_not_allowed`` or ``unknown_agent``: DESIGN §2), not a bad
    argument the model is asked to mend."""
    agent: dict[str, Any] = {"type": "string"}
    if targets is not None:
        agent["enum"] = targets
    return {
        "type": "object",
        "required": ["agent", "reason"],
        "properties": {
            "agent": agent,
            "reason": {"type": "string", "description": "why, for the next agent"},
        },
        "additionalProperties": False,
    }


def transfer_spec(targets: list[str]) -> ToolSpec:
    return ToolSpec(
        "transfer_to_agent",
        "Hand the conversation over to another agent. Use when another agent is better "
        "placed to help.",
        transfer_parameters(targets),
    )


ASK_HUMAN_SPEC = ToolSpec(
    "ask_human",
    "Ask a person a question and wait for their answer.",
    {
        "type": "object",
        "required": ["question"],
        "properties": {"question": {"type": "string"}},
        "additionalProperties": False,
    },
)
END_SESSION_SPEC = ToolSpec(
    "end_session",
    "End the conversation with the user when it is finished.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)


@dataclass(frozen=True)
class AgentSetup:
    agent_id: str
    agent: Agent
    model: ModelConfig
    options: AgentWith
    tools: dict[str, ToolDef]  # the declared tools this agent may call
    specs: list[ToolSpec]  # everything offered to the model
    handoff_targets: list[str]
    token_budget: int | None


def load_setup(ctx: StepContext) -> AgentSetup | str:
    """The setup, or what is wrong (for ``invalid_step_config``)."""
    definition = ctx.definition
    if not isinstance(definition, WorkflowDefinition):
        return "the agent step needs its workflow definition"
    agent_id = ctx.context.get("agent_id")
    agent = definition.agent_map.get(agent_id) if isinstance(agent_id, str) else None
    if agent is None or not isinstance(agent_id, str):
        return f"node {ctx.node!r} is bound to no declared agent"
    model = definition.model_of(agent)
    if model is None:
        return f"agent {agent_id!r} has no model"
    try:
        options = AgentWith.model_validate(ctx.config)
    except ValidationError as exc:
        return describe_validation_error(exc)
    tools = {name: definition.tools[name] for name in agent.tools if name in definition.tools}
    specs = [ToolSpec(name, t.description, t.parameters) for name, t in tools.items()]
    targets = list(agent.handoff_targets or [])
    if targets:
        specs.append(transfer_spec(targets))
    if agent.ask_human:
        specs.append(ASK_HUMAN_SPEC)
    if options.session:
        specs.append(END_SESSION_SPEC)
    return AgentSetup(
        agent_id, agent, model, options, tools, specs, targets, definition.token_budget
    )


def handoff_messages(messages: list[Message]) -> list[Message]:
    """The conversation as a handoff carries it: the last user and assistant text turns
    (tool calls and results stay with the agent that made them)."""
    said = [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if m["role"] in ("user", "assistant") and m.get("content")
    ]
    return said[-HANDOFF_MESSAGES:]


def handoff_note(handoff: dict[str, Any]) -> str:
    """The user turn that opens a conversation handed over with no prompt: who handed it
    over (a ``handoff`` step of a node bound to no agent names none), and the payload."""
    source, payload = handoff.get("from_agent"), handoff.get("payload")
    note = "The conversation was handed over to you"
    if source is not None:
        note += f" by agent {source!r}"
    if isinstance(payload, dict) and set(payload) <= {"reason"}:
        reason = payload.get("reason")
        return f"{note}. Reason: {reason}" if reason else note
    if payload is None:
        return note
    return f"{note}, with: {json.dumps(payload, ensure_ascii=False)}"


def render_text(ctx: StepContext, template: str) -> str:
    """A prompt rendered with the run's scope (no secrets: prompts go to a model)."""
    rendered = ctx.services.templates.render(template, dict(ctx.scope or {}))
    return rendered if isinstance(rendered, str) else str(rendered)


async def opening(ctx: StepContext, setup: AgentSetup) -> dict[str, Any]:
    """The journal's first entry: ``{system, messages, prompts}``.

    Stored prompts are resolved here once, a reference without a version to the run's
    version of the prompt (the latest when the run first used it); the entry keeps their
    rendered text and the versions used, so a resume or replay of the visit uses the
    same text."""
    used: list[dict[str, Any]] = []
    system: str | None = None
    if setup.agent.system_prompt_ref is not None:
        prompt = await ctx.services.resolve_prompt(setup.agent.system_prompt_ref, ctx.run_id)
        used.append({"ref": setup.agent.system_prompt_ref, "name": prompt.name,
                     "version": prompt.version})  # fmt: skip
        system = render_text(ctx, prompt.template)
    elif setup.agent.system_prompt is not None:
        system = render_text(ctx, setup.agent.system_prompt)
    messages: list[Message] = []
    handoff = ctx.context.get("handoff")
    if isinstance(handoff, dict) and isinstance(handoff.get("messages"), list):
        messages += [dict(m) for m in handoff["messages"]]
    messages += [m.model_dump() for m in setup.options.messages]
    options = setup.options
    if options.prompt is not None:
        messages.append({"role": "user", "content": options.prompt})
    elif options.prompt_ref is not None:
        prompt = await ctx.services.resolve_prompt(options.prompt_ref, ctx.run_id)
        used.append({"ref": options.prompt_ref, "name": prompt.name, "version": prompt.version})
        messages.append({"role": "user", "content": render_text(ctx, prompt.template)})
    elif isinstance(handoff, dict) and handoff.get("to_agent") == setup.agent_id:
        messages.append({"role": "user", "content": handoff_note(handoff)})
    return {"system": system, "messages": messages, "prompts": used}

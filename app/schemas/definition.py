"""The workflow definition format (DESIGN §2) as pydantic models.

Structure only: node ids, the graph rules (edges, reachability, cycles), templates,
schemas and agents are checked by ``app.engine.validation``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
NODE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$"
# a stored prompt: ``name`` (its latest version) or ``name@3`` (a fixed one)
PROMPT_REF_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}(@[1-9][0-9]{0,8})?$"
# what both providers accept as a function name
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_MAX_TURNS = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_delay_s: float = Field(default=1.0, ge=0, le=3600)
    backoff: float = Field(default=2.0, ge=1.0, le=10.0)
    max_delay_s: float = Field(default=60.0, ge=0, le=86400)
    retry_on_4xx: bool = False

    def delay_s(self, failed_attempts: int) -> float:
        """Delay before the next attempt after ``failed_attempts`` failures (≥ 1)."""
        delay = self.initial_delay_s * self.backoff ** (failed_attempts - 1)
        return float(min(delay, self.max_delay_s))


class Node(_Strict):
    step: str = Field(min_length=1, max_length=100)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    set: dict[str, Any] = Field(default_factory=dict)
    agent: str | None = None
    handoff_approval: bool = False
    interrupt_before: str | None = Field(default=None, min_length=1)
    interrupt_after: str | None = Field(default=None, min_length=1)
    max_iterations: int | None = Field(default=None, ge=1)
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    description: str | None = None
    # a join barrier: runs once, after every branch of the fan-out leading here arrived
    join: Literal["all"] | None = None


def _target_form(value: Any) -> str:
    return EDGE_FAN_OUT if isinstance(value, list) else EDGE_ONE


# an edge's ``to`` is one node or a list that fans out; the tags name the forms in
# validation errors, and are dropped from error paths (``FORM_TAGS``)
EDGE_ONE, EDGE_FAN_OUT = "one-target", "fan-out"
MAX_FAN_OUT = 100
EdgeTarget = Annotated[
    Annotated[str, Field(min_length=1), Tag(EDGE_ONE)]
    | Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, max_length=MAX_FAN_OUT),
        Tag(EDGE_FAN_OUT),
    ],
    Discriminator(_target_form),
]


class Edge(_Strict):
    from_: str = Field(alias="from", min_length=1)
    # a list fans out: each target starts a branch, all run concurrently (DESIGN §10)
    to: EdgeTarget
    when: str | None = None
    loop: bool = False

    @property
    def targets(self) -> list[str]:
        return list(self.to) if isinstance(self.to, list) else [self.to]

    @property
    def fans_out(self) -> bool:
        return isinstance(self.to, list)


Reducer = Literal["append", "merge", "add", "replace"]


class ModelConfig(_Strict):
    """A language model (DESIGN §9): a provider's wire format, where, which, and how."""

    provider: Literal["openai", "anthropic"]
    base_url: str | None = Field(default=None, min_length=1, pattern=r"^https?://[^\s]+$")
    model: str = Field(min_length=1, max_length=200)
    api_key: str | None = None  # usually "{{ secrets.NAME }}", rendered at call time
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)


class ToolDef(_Strict):
    """A tool an agent may call: an ``http`` request templated with ``args``, or a Python
    plugin (entry-point group ``stepwise.tools``)."""

    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    http: dict[str, Any] | None = None
    plugin: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> ToolDef:
        if (self.http is None) == (self.plugin is None):
            raise ValueError("a tool has exactly one of `http` or `plugin`")
        return self


def _model_form(value: Any) -> str:
    return MODEL_INLINE if isinstance(value, dict) else MODEL_NAME


# an agent's ``model`` is a name under ``models`` or an inline object; as with ``agents``,
# the tags name the forms in validation errors, and are dropped from error paths
MODEL_NAME, MODEL_INLINE = "model-name", "model-object"
AgentModel = Annotated[
    Annotated[str, Tag(MODEL_NAME)] | Annotated[ModelConfig, Tag(MODEL_INLINE)],
    Discriminator(_model_form),
]


class Agent(_Strict):
    description: str | None = None
    # None: may hand off to any agent a node is bound to
    handoff_targets: list[str] | None = None
    handoff_approval: bool = False
    # the language model settings of `step: agent` nodes bound to this agent (DESIGN §9)
    model: AgentModel | None = None
    system_prompt: str | None = None
    system_prompt_ref: str | None = Field(default=None, pattern=PROMPT_REF_PATTERN)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    tools: list[str] = Field(default_factory=list)
    ask_human: bool = False
    max_turns: int = Field(default=DEFAULT_MAX_TURNS, ge=1, le=1000)
    stream: bool = True

    @model_validator(mode="after")
    def _one_system_prompt(self) -> Agent:
        if self.system_prompt is not None and self.system_prompt_ref is not None:
            raise ValueError("give `system_prompt` or `system_prompt_ref`, not both")
        return self


class AgentItem(Agent):
    id: str = Field(min_length=1, max_length=100)


def _agents_form(value: Any) -> str:
    return AGENT_LIST if isinstance(value, list) else AGENT_MAPPING


# ``agents`` is a mapping of id to agent, or a list of ``{id, ...}`` items. The tags name the
# two forms in validation errors; ``app.engine.validation`` drops them from error paths.
AGENT_MAPPING, AGENT_LIST = "mapping", "list"
Agents = Annotated[
    Annotated[dict[str, Agent], Tag(AGENT_MAPPING)] | Annotated[list[AgentItem], Tag(AGENT_LIST)],
    Discriminator(_agents_form),
]

# the tags of the tagged unions above, by the field they follow in an error's path: no
# part of the document's path, so dropped from it
FORM_TAGS = {
    "agents": (AGENT_MAPPING, AGENT_LIST),
    "model": (MODEL_NAME, MODEL_INLINE),
    "to": (EDGE_ONE, EDGE_FAN_OUT),
}


class WorkflowDefinition(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    inputs: dict[str, Any] | None = None
    state: dict[str, Any] = Field(default_factory=dict)
    entry: str | None = None
    max_node_iterations: int = Field(default=25, ge=1, le=100_000)
    max_steps: int | None = Field(default=None, ge=1)
    max_handoff_depth: int = Field(default=10, ge=0, le=1000)
    # how long an ended run of this workflow is kept (overrides STEPWISE_RETENTION_DAYS)
    retention_days: int | None = Field(default=None, ge=1)
    output: Any = None
    token_budget: int | None = Field(default=None, ge=1)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    tools: dict[str, ToolDef] = Field(default_factory=dict)
    agents: Agents = Field(default_factory=dict)
    nodes: dict[str, Node] = Field(min_length=1)
    edges: list[Edge] = Field(default_factory=list)
    # how writes of parallel branches to a key combine at their join (DESIGN §10)
    reducers: dict[str, Reducer] = Field(default_factory=dict)
    max_concurrency: int = Field(default=8, ge=1, le=1000)  # steps running at once per run

    @property
    def entry_node(self) -> str:
        return self.entry if self.entry is not None else next(iter(self.nodes))

    def visit_limit(self, node_id: str) -> int:
        """How many times the node may be entered: its ``max_iterations``, or the
        workflow's ``max_node_iterations``."""
        return self.nodes[node_id].max_iterations or self.max_node_iterations

    @property
    def agent_map(self) -> dict[str, Agent]:
        if isinstance(self.agents, dict):
            return self.agents
        return {
            item.id: Agent.model_validate(item.model_dump(exclude={"id"})) for item in self.agents
        }

    def model_of(self, agent: Agent) -> ModelConfig | None:
        """The agent's model: a name under ``models``, or an inline object."""
        if isinstance(agent.model, str):
            return self.models.get(agent.model)
        return agent.model

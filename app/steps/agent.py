"""The ``agent`` built-in step (DESIGN §9): a language model in a tool-calling loop.

The loop is durable: every model answer, tool result, human answer and session message
is recorded in the visit's journal (``agent_turns``, through ``ctx.services``) before the
loop goes on. An execution first replays what is recorded — no model call and no tool
call is made again for a recorded turn, and no event is emitted again — then carries on.
A new visit's ``start`` entry is recorded in the transaction that finds the journal empty.
So a crash, a retry, a pause (``ask_human``, a session turn) or a resume of the same
visit continues where the loop was.

Journal entries, in order: ``start`` ``{system, messages, prompts}``, then ``model``
(an answer), ``tool`` ``{id, result | error, effect?, interrupt_id?}`` per tool call,
``user`` ``{content, ts}`` per session message.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

from app.agents.clients import ClientKey, ModelClients
from app.agents.providers import ModelAnswer, ModelError, ModelRequest, Provider
from app.agents.setup import (
    AgentSetup,
    handoff_messages,
    load_setup,
    opening,
    transfer_parameters,
)
from app.agents.stream import DeltaCoalescer
from app.agents.tools import argument_errors, result_text, run_http_tool, run_plugin_tool
from app.errors import StepwiseError
from app.steps.base import StepContext, StepResult
from app.steps.http import config_error, outbound_policy


class _Journal:
    def __init__(self, ctx: StepContext, entries: list[dict[str, Any]]) -> None:
        self._ctx = ctx
        self.entries = entries
        self.pos = 0

    def next(self) -> dict[str, Any] | None:
        """The next recorded entry, or None once the replay is over."""
        if self.pos < len(self.entries):
            entry = self.entries[self.pos]
            self.pos += 1
            return entry
        return None

    async def record(self, kind: str, data: Any) -> None:
        ctx = self._ctx
        seq = len(self.entries)
        await ctx.services.record_agent_turn(ctx.run_id, ctx.node, ctx.visit, seq, kind, data)
        self.entries.append({"seq": seq, "kind": kind, "data": data})
        self.pos = len(self.entries)

    def recorded(self, kind: str, key: str, value: Any) -> bool:
        return any(e["kind"] == kind and e["data"].get(key) == value for e in self.entries)


class _Loop:
    def __init__(self, ctx: StepContext, setup: AgentSetup, journal: _Journal) -> None:
        self.ctx = ctx
        self.setup = setup
        self.journal = journal
        self.messages: list[dict[str, Any]] = []
        self.tool_log: list[dict[str, Any]] = []
        self.usage = {"input_tokens": 0, "output_tokens": 0, "model_calls": 0}
        self.provider: Provider | None = None
        self._leases = AsyncExitStack()  # the shared model client, while the step runs
        self.text = ""
        self.finish_reason = "stop"

    # -- the loop -------------------------------------------------------------------------

    async def run(self, start: dict[str, Any]) -> StepResult:
        self.messages = list(start["messages"])
        self.system = start["system"]
        # the session message the opening took as its user turn, by its time
        self.opened_with = start.get("user_ts", _NONE)
        calls = 0  # model calls since the last user turn
        user_turns = sum(1 for m in self.messages if m["role"] == "user")
        while True:
            entry = self.journal.next()
            if entry is None:
                if calls >= self.setup.agent.max_turns:
                    msg = (
                        f"agent {self.setup.agent_id!r} made {calls} model calls without a "
                        f"final answer (max_turns {self.setup.agent.max_turns})"
                    )
                    return StepResult.failed("max_turns_exceeded", msg)
                over = self._over_budget(self.ctx.usage(None))
                if over is not None:
                    return over
                try:
                    answer = await self._ask_model()
                except ModelError as exc:
                    return StepResult.failed(
                        exc.code, exc.message, retryable=exc.retryable,
                        retry_after_s=exc.retry_after_s, details=exc.details,
                    )  # fmt: skip
                record = answer.as_record()
                await self.journal.record("model", record)
                total = self._count(record, len(self.journal.entries) - 1)
                self._answered(record)
                over = self._over_budget(total)
                if over is not None:
                    return over
            else:
                record = entry["data"]
                # a call answered before a crash, not yet counted in a checkpoint
                self._count(record, entry["seq"])
                self._answered(record)
            calls += 1
            for call in record["tool_calls"]:
                result = await self._tool(call)
                if result is not None:
                    return result
            if record["tool_calls"]:
                continue
            if not self.setup.options.session:
                return StepResult.succeeded(self.output())
            limit = self.setup.options.max_turns
            if limit is not None and user_turns >= limit:
                return StepResult.succeeded(self.output())
            message = await self._user_turn()
            if message is None:
                return StepResult.awaiting_input(self.text)
            if message in self.setup.options.exit_commands:
                return StepResult.succeeded(self.output())
            self.messages.append({"role": "user", "content": message})
            user_turns += 1
            calls = 0

    def _count(self, record: dict[str, Any], seq: int) -> dict[str, int]:
        """Count a model call in the run's usage, once (keyed by the journal's turn)."""
        turn = (self.ctx.idempotency_key, seq)  # run:node:visit — a fork starts its own
        return self.ctx.usage({**record["usage"], "model_calls": 1}, turn)

    def _answered(self, record: dict[str, Any]) -> None:
        said: dict[str, Any] = {"role": "assistant", "content": record["text"]}
        if record["tool_calls"]:
            said["tool_calls"] = record["tool_calls"]
        self.messages.append(said)
        self.text = record["text"]
        self.finish_reason = record["finish_reason"]
        self.usage["input_tokens"] += record["usage"]["input_tokens"]
        self.usage["output_tokens"] += record["usage"]["output_tokens"]
        self.usage["model_calls"] += 1

    def output(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "messages": self.messages,
            "tool_calls": self.tool_log,
            "usage": dict(self.usage),
            "finish_reason": self.finish_reason,
        }

    def _over_budget(self, total: dict[str, int]) -> StepResult | None:
        """``token_budget_exceeded`` once the run's tokens passed its budget (DESIGN §9):
        after the call that passed it, or before a call when another step did."""
        budget = self.setup.token_budget
        used = total["input_tokens"] + total["output_tokens"]
        if budget is None or used <= budget:
            return None
        msg = f"the run used {used} tokens; its token_budget is {budget}"
        return StepResult.failed("token_budget_exceeded", msg, details={"used": used})

    # -- the model ----------------------------------------------------------------------------

    async def _ask_model(self) -> ModelAnswer:
        ctx, setup = self.ctx, self.setup
        provider = self.provider
        if provider is None:
            api_key = setup.model.api_key
            if api_key is not None and ctx.services.templates.has_template(api_key):
                try:
                    api_key = ctx.services.templates.render(
                        api_key, {"secrets": ctx.services.secrets}
                    )
                except Exception as exc:  # a TemplateError: e.g. an unknown secret
                    message = getattr(exc, "message", type(exc).__name__)
                    raise ModelError("invalid_step_config", f"api_key: {message}") from None
            model = setup.model
            key = ClientKey(model.provider, model.base_url, outbound_policy(ctx), model.timeout_s)
            clients: ModelClients = ctx.services.model_clients
            provider = self.provider = await self._leases.enter_async_context(
                clients.provider(key, str(api_key) if api_key is not None else None)
            )
        agent = setup.agent
        request = ModelRequest(
            model=setup.model.model,
            system=self.system,
            messages=self.messages,
            tools=setup.specs,
            temperature=agent.temperature
            if agent.temperature is not None
            else setup.model.temperature,
            max_tokens=agent.max_tokens if agent.max_tokens is not None else setup.model.max_tokens,
            stream=agent.stream,
        )

        async def delta(text: str) -> None:
            await ctx.event("message.delta", node=ctx.node, text=text, attempt=ctx.attempt)

        coalescer = DeltaCoalescer(delta)
        try:
            return await provider.complete(request, coalescer.add)
        finally:
            await coalescer.close()

    async def close(self) -> None:
        await self._leases.aclose()

    # -- tools ----------------------------------------------------------------------------

    async def _tool(self, call: dict[str, Any]) -> StepResult | None:
        """Run (or replay) one tool call; a StepResult when the step ends here."""
        entry = self.journal.next()
        if entry is None:
            outcome = await self._call_tool(call)
            if isinstance(outcome, StepResult):
                return outcome
            entry = {"data": outcome}
        data = entry["data"]
        self._tool_done(call, data)
        effect = data.get("effect")
        if effect == "handoff":
            args = call["args"]
            return StepResult.handoff_to(
                args["agent"], {"reason": args.get("reason")}, handoff_messages(self.messages)
            )
        if effect == "end_session":
            return StepResult.succeeded(self.output())
        return None

    def _tool_done(self, call: dict[str, Any], data: dict[str, Any]) -> None:
        failed = "error" in data
        content = f"error: {data['error']}" if failed else result_text(data.get("result"))
        message: dict[str, Any] = {"role": "tool", "tool_call_id": call["id"], "name": call["name"],
                                   "content": content}  # fmt: skip
        if failed:
            message["is_error"] = True
        self.messages.append(message)
        logged = {"id": call["id"], "name": call["name"], "args": call["args"]}
        logged.update({"error": data["error"]} if failed else {"result": data.get("result")})
        self.tool_log.append(logged)

    async def _call_tool(self, call: dict[str, Any]) -> dict[str, Any] | StepResult:
        ctx, name, call_id, args = self.ctx, call["name"], call["id"], call["args"]
        if name == "ask_human":
            return await self._ask_human(call)
        await ctx.event("tool.called", node=ctx.node, tool=name, args=args, id=call_id)
        data = await self._outcome(name, args, call_id)
        if isinstance(data, StepResult):  # the tool failed the node
            if data.error is not None:
                error = data.error.message
                await ctx.event("tool.completed", node=ctx.node, id=call_id, error=error)
            return data
        data = {"id": call_id, **ctx.services.redactor.json(data)}
        await self.journal.record("tool", data)
        shown = {"error": data["error"]} if "error" in data else {"result": data.get("result")}
        await ctx.event("tool.completed", node=ctx.node, id=call_id, **shown)
        return data

    async def _outcome(self, name: str, args: Any, call_id: str) -> dict[str, Any] | StepResult:
        setup = self.setup
        if name == "end_session" and setup.options.session:
            return {"result": "the session ends", "effect": "end_session"}
        if name == "transfer_to_agent" and setup.handoff_targets:
            problem = argument_errors(transfer_parameters(), args)
            if problem is not None:
                return {"error": problem}
            return {"result": f"transferred to {args['agent']}", "effect": "handoff"}
        tool = setup.tools.get(name)
        if tool is None:
            return {"error": f"there is no tool {name!r}"}
        problem = argument_errors(tool.parameters, args)
        if problem is not None:
            return {"error": f"invalid arguments: {problem}"}
        if tool.http is not None:
            outcome = await run_http_tool(self.ctx, name, tool.http, args, call_id)
        else:
            assert tool.plugin is not None
            outcome = await run_plugin_tool(self.ctx, name, tool.plugin, args)
        if outcome.failure is not None:
            return outcome.failure
        return {"result": outcome.result}

    async def _ask_human(self, call: dict[str, Any]) -> dict[str, Any] | StepResult:
        ctx = self.ctx
        problem = argument_errors({"type": "object", "required": ["question"]}, call["args"])
        if problem is not None or not self.setup.agent.ask_human:
            data: dict[str, Any] = {
                "id": call["id"],
                "error": problem or "there is no tool 'ask_human'",
            }
            await self.journal.record("tool", data)
            return data
        response = ctx.context.get("response")
        fresh = isinstance(response, dict) and not self.journal.recorded(
            "tool", "interrupt_id", response.get("interrupt_id")
        )
        if not fresh:
            await ctx.event(
                "tool.called", node=ctx.node, tool="ask_human", args=call["args"], id=call["id"]
            )
            payload = {"question": call["args"]["question"], "tool_call_id": call["id"],
                       "agent": self.setup.agent_id}  # fmt: skip
            return StepResult.interrupted(payload, kind="agent_question")
        assert isinstance(response, dict)
        data = {"id": call["id"], "result": response.get("value"),
                "interrupt_id": response.get("interrupt_id")}  # fmt: skip
        await self.journal.record("tool", data)
        await ctx.event("tool.completed", node=ctx.node, id=call["id"], result=data["result"])
        return data

    # -- sessions -------------------------------------------------------------------------

    async def _user_turn(self) -> str | None:
        """The next user message of a session: recorded, or just sent (and then recorded)."""
        entry = self.journal.next()
        if entry is not None:
            return str(entry["data"]["content"])
        sent = session_message(self.ctx)
        if sent is None:
            return None
        message, ts = sent
        if ts == self.opened_with or self.journal.recorded("user", "ts", ts):
            return None  # that message was already taken
        await self.journal.record("user", {"content": message, "ts": ts})
        return message


_NONE = object()  # (no session message opened the loop)


def session_message(ctx: StepContext) -> tuple[str, Any] | None:
    """The session message this execution was resumed with, as the text of a user turn
    (a JSON value other than a string as JSON text), and its time; None if none was."""
    if "user_message" not in ctx.context:
        return None
    message = ctx.context["user_message"]
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    history = ctx.context.get("messages") or []
    return message, history[-1].get("ts") if history else None


class AgentStep:
    """``step: agent``."""

    async def execute(self, ctx: StepContext) -> StepResult:
        setup = load_setup(ctx)
        if isinstance(setup, str):
            return config_error("agent", setup)
        # perf (issue 17): the opening is built before the journal is read, so that reading
        # an empty journal and recording the opening are one transaction; a replay reads
        # the recorded opening and drops this one (and what kept it from being built)
        try:
            fresh: dict[str, Any] | StepResult | Exception = await self._opening(ctx, setup)
        except Exception as exc:  # e.g. a prompt that no longer renders: the journal decides
            fresh = exc
        services = ctx.services
        if isinstance(fresh, dict):
            entries = await services.agent_turns(ctx.run_id, ctx.node, ctx.visit, start=fresh)
        else:
            entries = await services.agent_turns(ctx.run_id, ctx.node, ctx.visit)
            if not entries:
                if isinstance(fresh, Exception):
                    raise fresh
                return fresh
        journal = _Journal(ctx, entries)
        start_entry = journal.next()
        assert start_entry is not None  # the opening, recorded or just now
        loop = _Loop(ctx, setup, journal)
        try:
            return await loop.run(start_entry["data"])
        finally:
            await loop.close()

    async def _opening(self, ctx: StepContext, setup: AgentSetup) -> dict[str, Any] | StepResult:
        """The journal's first entry for a new visit, or the result that ends the step
        when there is none (an unknown prompt, no user turn yet)."""
        try:
            start = await opening(ctx, setup)
        except StepwiseError as exc:  # an unknown prompt
            return StepResult.failed(exc.code, exc.message)
        except Exception as exc:  # a prompt's TemplateError, reported as the runner's are
            expression = getattr(exc, "expression", None)
            if expression is None:
                raise
            where = f"node {ctx.node!r} (agent {setup.agent_id!r}'s prompt)"
            message = f"{where}: {getattr(exc, 'message', exc)} (in {expression!r})"
            return StepResult.failed(
                "expression_error",
                ctx.services.redactor.text(message),
                details={"expression": expression},
            )
        if not any(m["role"] == "user" for m in start["messages"]):
            sent = session_message(ctx)
            if sent is None:
                if setup.options.session:  # the first message opens the conversation
                    return StepResult.awaiting_input(None)
                return config_error(
                    "agent", "no user turn: give `with.prompt` or `with.prompt_ref`"
                )
            start["messages"].append({"role": "user", "content": sent[0]})
            start["user_ts"] = sent[1]
        # a secret in `with` or a prompt is never sent to a model
        return dict(ctx.services.redactor.json(start))

"""``provider: anthropic``: the Messages wire format, through the ``anthropic`` library.
Its own retries are off: the node's ``retry`` policy rules."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2

from app.agents.providers import (
    NO_API_KEY,
    Message,
    ModelAnswer,
    ModelError,
    ModelRequest,
    OnText,
    malformed,
    status_error,
    transport_error,
    unusable,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096  # the Messages API requires one
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                  "max_tokens": "length"}  # fmt: skip


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages as Messages-API turns: tool results go in a user turn, and
    consecutive turns of one role are merged (the API wants them alternating)."""
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        if m["role"] == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m["tool_call_id"],
                "content": m["content"],
            }
            if m.get("is_error"):
                block["is_error"] = True
            add("user", [block])
        elif m["role"] == "assistant":
            blocks: list[dict[str, Any]] = []
            if m.get("content"):
                blocks.append({"type": "text", "text": m["content"]})
            for call in m.get("tool_calls") or []:
                args = call["args"] if isinstance(call["args"], dict) else {}
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": call["name"], "input": args}
                )
            add("assistant", blocks or [{"type": "text", "text": ""}])
        else:
            add("user", [{"type": "text", "text": m.get("content") or ""}])
    return out


class AnthropicProvider:
    def __init__(self, client: anthropic.AsyncAnthropic, where: str) -> None:
        self._client = client
        self.where = where

    @classmethod
    def connect(cls, base_url: str | None, http_client: httpx2.AsyncClient) -> AnthropicProvider:
        client = anthropic.AsyncAnthropic(
            base_url=base_url or DEFAULT_BASE_URL,
            api_key=NO_API_KEY,
            max_retries=0,
            http_client=http_client,
        )
        return cls(client, f"model server {base_url or DEFAULT_BASE_URL}")

    def with_api_key(self, api_key: str | None) -> AnthropicProvider:
        if not api_key:
            return self
        return AnthropicProvider(self._client.with_options(api_key=api_key), self.where)

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest, on_text: OnText) -> ModelAnswer:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": wire_messages(request.messages),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        if request.temperature is not None:
            # sent as a body field: newer releases of the library no longer type it
            params["extra_body"] = {"temperature": request.temperature}
        try:
            if request.stream:
                return await self._streamed(params, on_text)
            return self._whole(await self._client.messages.create(**params))
        except ModelError:
            raise
        except anthropic.APIStatusError as exc:
            raise status_error(
                exc.status_code, exc.response.headers, exc.body, self.where
            ) from None
        except Exception as exc:
            error = transport_error(exc, self.where)
            if error is not None:
                raise error from None
            if isinstance(exc, anthropic.APIError):
                raise malformed(self.where, f"unusable answer ({type(exc).__name__})") from None
            error = unusable(self.where, exc)
            if error is not None:
                raise error from None
            raise

    def _whole(self, message: Any) -> ModelAnswer:
        text, calls = [], []
        for block in message.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                calls.append({"id": block.id, "name": block.name, "args": block.input})
        reason = message.stop_reason or "end_turn"
        return ModelAnswer(
            "".join(text),
            calls,
            message.usage.input_tokens,
            message.usage.output_tokens,
            FINISH_REASONS.get(reason, reason),
        )

    async def _streamed(self, params: dict[str, Any], on_text: OnText) -> ModelAnswer:
        stream = await self._client.messages.create(**params, stream=True)
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        reason: str | None = None
        stopped = False
        input_tokens = output_tokens = 0
        async with stream:
            async for event in stream:
                if event.type == "message_start":
                    input_tokens = event.message.usage.input_tokens or 0
                    output_tokens = event.message.usage.output_tokens or 0
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                elif event.type == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        text.append(delta.text)
                        await on_text(delta.text)
                    elif delta.type == "input_json_delta" and event.index in blocks:
                        blocks[event.index]["json"] += delta.partial_json
                elif event.type == "message_delta":
                    reason = event.delta.stop_reason or reason
                    if event.usage is not None:
                        output_tokens = event.usage.output_tokens or output_tokens
                elif event.type == "message_stop":
                    stopped = True
        if not stopped:
            raise malformed(self.where, "the answer's stream ended before it was complete")
        calls = [
            {"id": b["id"], "name": b["name"], "args": _parse(b["json"])}
            for _, b in sorted(blocks.items())
        ]
        reason = reason or ("tool_use" if calls else "end_turn")
        return ModelAnswer(
            "".join(text), calls, input_tokens, output_tokens, FINISH_REASONS.get(reason, reason)
        )


def _parse(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text

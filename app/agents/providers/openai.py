"""``provider: openai``: the Chat Completions wire format, through the ``openai`` library
(any compatible server, chosen by ``base_url``). Its own retries are off: the node's
``retry`` policy rules."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def wire_messages(system: str | None, messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            out.append(
                {
                    "role": "assistant",
                    "content": m.get("content") or None,
                    "tool_calls": [
                        {
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": _args_text(call)},
                        }
                        for call in m["tool_calls"]
                    ],
                }
            )
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _args_text(call: dict[str, Any]) -> str:
    args = call.get("args")
    return args if isinstance(args, str) else json.dumps(args)


def parse_args(text: str) -> Any:
    """Arguments as JSON when they parse, else the raw text (checked, then sent back)."""
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text


class OpenAIProvider:
    def __init__(self, client: openai.AsyncOpenAI, where: str) -> None:
        self._client = client
        self.where = where

    @classmethod
    def connect(cls, base_url: str | None, http_client: httpx2.AsyncClient) -> OpenAIProvider:
        client = openai.AsyncOpenAI(
            base_url=base_url or DEFAULT_BASE_URL,
            api_key=NO_API_KEY,
            max_retries=0,
            http_client=http_client,
        )
        return cls(client, f"model server {base_url or DEFAULT_BASE_URL}")

    def with_api_key(self, api_key: str | None) -> OpenAIProvider:
        if not api_key:
            return self
        return OpenAIProvider(self._client.with_options(api_key=api_key), self.where)

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest, on_text: OnText) -> ModelAnswer:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": wire_messages(request.system, request.messages),
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        try:
            if request.stream:
                return await self._streamed(params, on_text)
            return self._whole(await self._client.chat.completions.create(**params))
        except ModelError:
            raise
        except openai.APIStatusError as exc:
            raise status_error(
                exc.status_code, exc.response.headers, exc.body, self.where
            ) from None
        except Exception as exc:
            error = transport_error(exc, self.where)
            if error is not None:
                raise error from None
            if isinstance(exc, openai.APIError):
                raise malformed(self.where, f"unusable answer ({type(exc).__name__})") from None
            error = unusable(self.where, exc)
            if error is not None:
                raise error from None
            raise

    def _whole(self, completion: Any) -> ModelAnswer:
        if not completion.choices:
            raise malformed(self.where, "an answer without choices")
        choice = completion.choices[0]
        calls = [
            {"id": c.id or f"call_{i}", "name": c.function.name,
             "args": parse_args(c.function.arguments or "")}
            for i, c in enumerate(choice.message.tool_calls or [])
        ]  # fmt: skip
        usage = completion.usage
        return ModelAnswer(
            text=choice.message.content or "",
            tool_calls=calls,
            input_tokens=(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=(usage.completion_tokens or 0) if usage else 0,
            finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
        )

    async def _streamed(self, params: dict[str, Any], on_text: OnText) -> ModelAnswer:
        stream = await self._client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        input_tokens = output_tokens = 0
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens or 0
                    output_tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        await on_text(delta.content)
                    for part in (delta.tool_calls if delta is not None else None) or []:
                        call = calls.setdefault(part.index, {"id": "", "name": "", "args": ""})
                        if part.id:
                            call["id"] = part.id
                        if part.function is not None:
                            call["name"] += part.function.name or ""
                            call["args"] += part.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if finish is None:
            raise malformed(self.where, "the answer's stream ended before it was complete")
        tool_calls = [
            {"id": c["id"] or f"call_{i}", "name": c["name"], "args": parse_args(c["args"])}
            for i, c in sorted(calls.items())
        ]
        return ModelAnswer("".join(text), tool_calls, input_tokens, output_tokens, finish)

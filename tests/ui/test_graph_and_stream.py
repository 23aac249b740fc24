"""The inspector's graph drawing and event stream, in the browser: parallel fan-out and
join nodes drawn from a definition, SSE frames cut anywhere, and step tokens appended to
the transcript while the step still runs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from playwright.async_api import Page, expect

from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import store
from tests.ui.conftest import Serve
from tests.ui.helpers import expect_node, expect_status, has_class, start_run

FAN_OUT: dict[str, Any] = {
    "name": "fan-out",
    "nodes": {
        "plan": {"step": "set"},
        "research": {"step": "set"},
        "draft": {"step": "set"},
        "review": {"step": "set"},
        "merge": {"step": "set", "join": "all"},
        "check": {"step": "set"},
        "end": {"step": "set"},
    },
    "edges": [
        {"from": "plan", "to": ["research", "draft", "review"]},
        {"from": "research", "to": "merge"},
        {"from": "draft", "to": "merge"},
        {"from": "review", "to": "merge"},
        {"from": "merge", "to": "check"},
        {"from": "check", "to": "plan", "when": "state.again", "loop": True},
        {"from": "check", "to": "end"},
    ],
}

DRAW = """async ([definition, states, branches, taken]) => {
  const { renderGraph } = await import("/ui/static/graph.js");
  const box = document.createElement("div");
  box.id = "probe";
  document.body.append(box);
  const graph = renderGraph(box, definition);
  const sets = Object.fromEntries(Object.entries(branches).map(([k, v]) => [k, new Set(v)]));
  graph.update(states, sets, new Set(taken));
}"""


def translate(transform: str | None) -> tuple[float, float]:
    match = re.fullmatch(r"translate\(([-\d.]+),([-\d.]+)\)", transform or "")
    assert match, transform
    return float(match.group(1)), float(match.group(2))


async def test_fan_out_join_and_loop_edges_are_drawn(page: Page, api: httpx.AsyncClient) -> None:
    await page.goto(f"{api.base_url}/ui#/workflows")
    states = {"plan": "done", "research": "current", "draft": "done", "review": "paused"}
    branches = {"research": ["research"], "draft": ["draft"]}
    await page.evaluate(DRAW, [FAN_OUT, states, branches, ["plan>draft", "plan>research"]])
    probe = page.locator("#probe svg.graph")

    fan = probe.locator('g.edge.fan[data-from="plan"]')
    await expect(fan).to_have_count(3)
    assert {await e.get_attribute("data-to") for e in await fan.all()} == {
        "research",
        "draft",
        "review",
    }
    await expect(probe.locator("circle.fan-dot")).to_have_count(1)
    await expect(probe.locator('g.node[data-node="merge"]')).to_have_class(has_class("join"))
    await expect(probe.locator('g.edge.back[data-from="check"][data-to="plan"]')).to_have_count(1)
    await expect(probe.locator('g.edge:not(.back)[data-to="merge"]')).to_have_count(3)

    # layers: plan above the three branches (side by side), above the join, above check
    def node(name: str) -> Any:
        return probe.locator(f'g.node[data-node="{name}"]')

    y = {n: translate(await node(n).get_attribute("transform"))[1] for n in FAN_OUT["nodes"]}
    assert y["plan"] < y["research"] == y["draft"] == y["review"] < y["merge"] < y["check"]
    assert y["check"] < y["end"]
    xs = {
        translate(await node(n).get_attribute("transform"))[0]
        for n in ("research", "draft", "review")
    }
    assert len(xs) == 3

    for name, state in {**states, "merge": "unreached"}.items():
        await expect(node(name)).to_have_attribute("data-state", state)
    await expect(node("research").locator("text.branches")).to_have_text("⑂ research")
    taken = probe.locator("g.edge.taken")
    await expect(taken).to_have_count(2)
    assert {await e.get_attribute("data-to") for e in await taken.all()} == {"draft", "research"}


SSE_FRAMES = """async (chunks) => {
  const { SseParser } = await import("/ui/static/sse.js");
  const frames = [];
  const parser = new SseParser((frame) => frames.push(frame));
  for (const chunk of chunks) parser.push(chunk);
  return frames;
}"""


async def test_sse_frames_cut_anywhere(page: Page, api: httpx.AsyncClient) -> None:
    await page.goto(f"{api.base_url}/ui#/workflows")
    text = (
        ": keep-alive\r\n\r\n"
        'id: 1\r\nevent: run.started\r\ndata: {"seq": 1}\r\n\r\n'
        'id: 2\nevent: step.progress\ndata: {"seq": 2,\ndata:  "x": "a:b"}\n\n'
    )
    expected = [
        {"id": "1", "event": "run.started", "data": '{"seq": 1}'},
        {"id": "2", "event": "step.progress", "data": '{"seq": 2,\n "x": "a:b"}'},
    ]
    assert await page.evaluate(SSE_FRAMES, [text]) == expected
    for cut in range(1, len(text)):  # every place a network read can split the text
        assert await page.evaluate(SSE_FRAMES, [text[:cut], text[cut:]]) == expected, cut
    assert await page.evaluate(SSE_FRAMES, list(text)) == expected  # one character a read


class Talk:
    """A step that sends tokens as progress, and finishes when the test lets it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def execute(self, ctx: StepContext) -> StepResult:
        for token in ("Hel", "lo"):
            await ctx.progress(text=token)
        await self.gate.wait()
        await ctx.progress(text=", world")
        return StepResult.succeeded({"text": "Hello, world"})


async def test_tokens_appear_while_the_step_runs(page: Page, serve: Serve) -> None:
    talk = Talk()
    base = await serve(registry=StepRegistry({**builtin_steps(), "talk": talk}))
    definition = {
        "name": "talker",
        "nodes": {"speak": {"step": "talk"}, "after": {"step": "set"}},
        "edges": [{"from": "speak", "to": "after"}],
    }
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await store(client, definition)
        run_id = await start_run(client, "talker")
        await page.goto(f"{base}/ui#/runs/{run_id}")
        tokens = page.locator('.transcript[data-node="speak"] pre.tokens')
        await expect(tokens).to_have_text("Hello")
        await expect_status(page, "running")
        await expect_node(page, "speak", "current")
        await expect_node(page, "after", "unreached")
        talk.gate.set()
        await expect(tokens).to_have_text("Hello, world")
        await expect_status(page, "completed")
        await expect_node(page, "after", "done")


class Stutter:
    """Streams a model's answer; the first attempt breaks off mid-answer (retryable)."""

    async def execute(self, ctx: StepContext) -> StepResult:
        await ctx.event("message.delta", node=ctx.node, text="Hel", attempt=ctx.attempt)
        if ctx.attempt == 1:
            return StepResult.failed("network_error", "the stream broke", retryable=True)
        await ctx.event("message.delta", node=ctx.node, text="Hello", attempt=ctx.attempt)
        return StepResult.succeeded({"text": "HelHello"})


async def test_a_retried_answer_is_marked_in_the_transcript(page: Page, serve: Serve) -> None:
    base = await serve(registry=StepRegistry({**builtin_steps(), "stutter": Stutter()}))
    definition = {
        "name": "stutterer",
        "nodes": {"speak": {"step": "stutter",
                            "retry": {"max_attempts": 2, "initial_delay_s": 0.01}}},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await store(client, definition)
        run_id = await start_run(client, "stutterer")
        await page.goto(f"{base}/ui#/runs/{run_id}")
        await expect_status(page, "completed")
        tokens = page.locator('.transcript[data-node="speak"] pre.tokens')
        await expect(tokens).to_have_text("Hel\n— attempt 2 —\nHelHello")

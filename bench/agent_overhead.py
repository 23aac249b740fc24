"""The ``agent`` step's own cost: a one-turn agent against a fake OpenAI-compatible model
on loopback, beside the model's own latency and a run of one ``set`` step.

    python -m bench.agent_overhead --params '{"samples": 200}'

One ``stepwise serve`` (Postgres), one run in flight; for each sample, ``POST /runs`` →
``/wait`` returns the completed run. The model (``tests/agents/fake_models.py``) answers
at once, streaming a short text in 3 chunks. The overhead of the agent step is the agent
run's time minus the one-``set``-step run's time minus the model's own latency (the same
streamed request sent straight to the model with httpx).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psutil

from bench.common import Clock, emit, latency_summary, log, suite_args
from bench.lean_http import LeanClient
from bench.stepwise_suite import Server, http_client, start, store, wait
from tests.agents.fake_models import Answer, FakeModel

DEFAULTS = {"samples": 200}


def agent_workflow(base_url: str) -> dict[str, Any]:
    return {
        "name": "bench-agent",
        "models": {"m": {"provider": "openai", "base_url": base_url, "model": "fake-1"}},
        "agents": {"helper": {"model": "m", "system_prompt": "You help."}},
        "nodes": {
            "ask": {
                "step": "agent",
                "agent": "helper",
                "with": {"prompt": "Where is it?"},
                "set": {"answer": "{{ output.text }}"},
            }
        },
    }


SET_ONE = {"name": "bench-set-one", "nodes": {"one": {"step": "set", "set": {"n": 1}}}}


async def timed_runs(client: LeanClient, workflow: str, samples: int) -> list[float]:
    took = []
    for _ in range(samples):
        t0 = Clock.now()
        run = await wait(client, await start(client, workflow))
        took.append(Clock.now() - t0)
        if run["status"] != "completed":
            raise RuntimeError(f"{workflow} ended {run['status']}: {run.get('error')}")
    return took


async def model_latency(fake: FakeModel, samples: int) -> list[float]:
    body = {
        "model": "fake-1",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You help."},
            {"role": "user", "content": "Where is it?"},
        ],
    }
    took = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(samples):
            t0 = Clock.now()
            async with client.stream("POST", f"{fake.base_url}/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    pass
            took.append(Clock.now() - t0)
    return took


async def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    samples = int(p["samples"])
    fake = FakeModel("openai").start()
    fake.push(*(Answer(text="It has shipped.") for _ in range(3 * samples + 50)))
    try:
        env = {"STEPWISE_ALLOW_PRIVATE_NETWORKS": "true"}
        async with Server("bench_agent", env) as server, http_client(server.base, 1) as client:
            await store(client, agent_workflow(fake.base_url))
            await store(client, SET_ONE)
            await timed_runs(client, "bench-agent", 20)  # warm-up
            await timed_runs(client, "bench-set-one", 20)
            process = psutil.Process(server.pid)
            cpu0 = sum(process.cpu_times()[:2])
            agent = await timed_runs(client, "bench-agent", samples)
            cpu1 = sum(process.cpu_times()[:2])
            plain = await timed_runs(client, "bench-set-one", samples)
            cpu2 = sum(process.cpu_times()[:2])
        model = await model_latency(fake, samples)
    finally:
        fake.stop()
    a, s, m = (latency_summary(x) for x in (agent, plain, model))
    out = {
        "samples": samples,
        "agent_run": a,
        "set_run": s,
        "model_call": m,
        "agent_step_overhead_p50_ms": a["p50_ms"] - s["p50_ms"] - m["p50_ms"],
        "server_cpu_ms_per_agent_run": 1000 * (cpu1 - cpu0) / samples,
        "server_cpu_ms_per_set_run": 1000 * (cpu2 - cpu1) / samples,
    }
    log(f"agent: overhead p50 {out['agent_step_overhead_p50_ms']:.1f} ms")
    return out


def main() -> None:
    emit(asyncio.run(run(suite_args())))


if __name__ == "__main__":
    main()

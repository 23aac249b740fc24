"""Operations: liveness, readiness, Prometheus metrics, the served docs."""

from __future__ import annotations

import dataclasses
import re
import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.database import create_sessionmaker
from tests.conftest import AppFactory, run_and_wait


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readyz_is_503_when_the_database_is_unreachable(
    make_client: AppFactory, backend: str, tmp_path: object
) -> None:
    client = await make_client()
    app = client.app  # type: ignore[attr-defined]
    unreachable = (
        "sqlite+aiosqlite:////nonexistent-dir/stepwise.db"
        if backend == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/stepwise"
    )
    dead = create_async_engine(unreachable)
    # the API now reads through a database that does not answer; the runners keep theirs
    app.state.engine = dataclasses.replace(app.state.engine, sessions=create_sessionmaker(dead))
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "database_unavailable"
        assert (await client.get("/healthz")).status_code == 200
        # a request that needs the database: 503 too, not a 500
        stored = await client.get("/workflows")
        assert stored.status_code == 503, stored.text
        assert stored.json()["code"] == "database_unavailable"
    finally:
        await dead.dispose()


@pytest.mark.postgres_only
async def test_a_database_that_was_dropped_is_unavailable_not_an_error(
    make_client: AppFactory,
) -> None:
    """The API's database is gone (dropped, or its name wrong): requests that need it get
    503 database_unavailable, as for a server that does not answer, not a 500."""
    client = await make_client()
    app = client.app  # type: ignore[attr-defined]
    gone = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/gone_{uuid.uuid4().hex}"
    )
    app.state.engine = dataclasses.replace(app.state.engine, sessions=create_sessionmaker(gone))
    try:
        for response in (await client.get("/runs"), await client.get("/workflows")):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "database_unavailable"
            assert response.headers["retry-after"] == "5"
    finally:
        await gone.dispose()


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if got == wanted:
                return float(match.group(3))
    return 0.0


async def test_metrics(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    stored = await client.post("/workflows", json={"name": "m", "nodes": {"a": {"step": "set"}}})
    assert stored.status_code == 201
    await client.get("/workflows/nope")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for family in (
        "stepwise_http_requests_total",
        "stepwise_http_request_duration_seconds",
        "stepwise_runs_started_total",
        "stepwise_runs_finished_total",
        "stepwise_steps_total",
        "stepwise_step_duration_seconds",
        "stepwise_runs_in_flight",
        "stepwise_workflows_stored_total",
    ):
        assert f"# TYPE {family}" in text, family
    assert sample(text, "stepwise_workflows_stored_total") == (
        sample(before, "stepwise_workflows_stored_total") + 1
    )
    labels = {"method": "GET", "route": "/workflows/{name}", "status": "404"}
    assert sample(text, "stepwise_http_requests_total", **labels) == (
        sample(before, "stepwise_http_requests_total", **labels) + 1
    )
    run = await run_and_wait(client, {"workflow": "m", "inputs": {}})
    assert run["status"] == "completed"


async def test_metrics_count_every_event_of_a_write(client: httpx.AsyncClient) -> None:
    """Three pure steps commit together, their events counted once per type and write."""
    three = {
        "name": "m3",
        "nodes": {name: {"step": "set", "set": {name: 1}} for name in "abc"},
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    }
    assert (await client.post("/workflows", json=three)).status_code == 201
    before = (await client.get("/metrics")).text
    run = await run_and_wait(client, {"workflow": "m3", "inputs": {}})
    assert run["status"] == "completed"
    after = (await client.get("/metrics")).text
    for name, labels, n in [
        ("stepwise_events_total", {"type": "node.completed"}, 3),
        ("stepwise_events_total", {"type": "state.updated"}, 3),
        ("stepwise_events_total", {"type": "run.completed"}, 1),
        ("stepwise_steps_total", {"status": "succeeded"}, 3),
        ("stepwise_runs_finished_total", {"status": "completed"}, 1),
    ]:
        assert sample(after, name, **labels) == sample(before, name, **labels) + n, (name, labels)


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    document = (await client.get("/openapi.json")).json()
    assert "/workflows" in document["paths"]

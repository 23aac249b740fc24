"""Secrets (DESIGN §8): ``{{ secrets.NAME }}`` reaches the step, and nowhere else.

A canary secret is planted in the environment; workflows use it on success and failure
paths; afterwards every column of every table, every event and the captured log
(DEBUG) are searched for it: zero hits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback_server import Hit, LoopbackServer, Reply
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.engine.services import Redactor, load_secrets
from app.settings import Settings
from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import AppFactory, events_of, run_and_wait, store

CANARY = "cnry-7f2a9c-Zq4uVx81"
TABLES = ("workflows", "runs", "checkpoints", "events")


def echo(status: int) -> Any:
    """A reply that echoes the request's Authorization header and target everywhere."""

    def reply(hit: Hit) -> Reply:
        said = {"authorization": hit.headers.get("authorization"), "target": hit.target}
        return Reply(
            status,
            [
                ("Content-Type", "application/json"),
                ("X-Echo-Authorization", hit.headers.get("authorization", "")),
                ("X-Echo-Target", hit.target),
            ],
            json.dumps(said).encode(),
        )

    return reply


@pytest.fixture
async def secret_client(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> httpx.AsyncClient:
    # Engine.build reads os.environ at startup: set the variable before the app is made
    monkeypatch.setenv("STEPWISE_SECRET_API_TOKEN", CANARY)
    return await make_client()


async def database_text(database_url: str) -> dict[str, list[str]]:
    """Every column of every row of every table, cast to text in SQL."""
    engine = create_async_engine(database_url)
    found: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            for table in TABLES:
                columns = await conn.run_sync(
                    lambda sync, table=table: [c["name"] for c in inspect(sync).get_columns(table)]
                )
                casts = ", ".join(f'CAST("{c}" AS TEXT)' for c in columns)
                rows = (await conn.execute(text(f"SELECT {casts} FROM {table}"))).all()
                found[table] = [value for row in rows for value in row if value is not None]
    finally:
        await engine.dispose()
    return found


async def assert_no_canary(
    client: httpx.AsyncClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    run_ids: list[str],
) -> None:
    tables = await database_text(database_url)
    assert not run_ids or all(tables[t] for t in ("runs", "checkpoints", "events"))
    leaks = {table: [v for v in values if CANARY in v] for table, values in tables.items()}
    assert leaks == {table: [] for table in TABLES}, leaks
    for run_id in run_ids:
        run = (await client.get(f"/runs/{run_id}")).json()
        assert CANARY not in json.dumps(run), run
        events = await events_of(client, run_id)
        assert events
        assert CANARY not in json.dumps(events)
        checkpoints = (await client.get(f"/runs/{run_id}/checkpoints")).json()
        for item in checkpoints["items"]:
            full = (await client.get(f"/runs/{run_id}/checkpoints/{item['id']}")).text
            assert CANARY not in full
    logged = [r for r in caplog.records if CANARY in r.getMessage()]
    assert not logged, [r.getMessage() for r in logged]
    assert CANARY not in caplog.text


def http_node(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "step": "http",
        "with": {
            "url": url,
            "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
            **extra,
        },
        "set": {"answer": "{{ output }}"},
    }


async def test_secret_reaches_the_server_and_nothing_else(
    secret_client: httpx.AsyncClient,
    server: LoopbackServer,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.route("/echo", echo(200))
    definition = {
        "name": "uses-a-secret",
        "nodes": {
            "fetch": http_node(server.url("/echo")),
            "copy": {
                "step": "set",
                "with": {"token": "{{ secrets.API_TOKEN }}", "n": 1},
                "set": {"token": "{{ output.token }}"},
            },
        },
        "edges": [{"from": "fetch", "to": "copy"}],
    }
    await store(secret_client, definition)
    run = await run_and_wait(secret_client, {"workflow": "uses-a-secret", "inputs": {}})

    assert run["status"] == "completed", run
    [hit] = server.hits_for("/echo")
    assert hit.headers["authorization"] == f"Bearer {CANARY}"  # the step got the value
    answer = run["state"]["answer"]
    assert answer["status"] == 200
    assert answer["body"]["authorization"] == "Bearer ***"
    assert answer["headers"]["x-echo-authorization"] == "Bearer ***"
    assert run["state"]["token"] == "***"
    await assert_no_canary(secret_client, database_url, caplog, [run["id"]])


async def test_secret_in_the_query_and_in_a_failed_answer(
    secret_client: httpx.AsyncClient,
    server: LoopbackServer,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.route("/fail", echo(500))
    server.route("/echo", echo(200))
    definition = {
        "name": "secret-failures",
        "nodes": {
            "fetch": {
                **http_node(server.url("/echo") + "?token={{ secrets.API_TOKEN }}"),
                "set": {"target": "{{ output.body.target }}"},
            },
            "boom": {
                **http_node(server.url("/fail") + "?token={{ secrets.API_TOKEN }}"),
                "retry": {"max_attempts": 2, "initial_delay_s": 0.01},
            },
        },
        "edges": [{"from": "fetch", "to": "boom"}],
    }
    run = await run_and_wait(secret_client, {"definition": definition, "inputs": {}})

    assert run["status"] == "failed", run
    assert len(server.hits_for("/fail")) == 2
    assert all(CANARY in hit.target for hit in server.hits)
    assert run["state"]["target"] == "/echo?token=***"
    error = run["error"]
    assert error["code"] == "http_error" and error["node"] == "boom"
    assert error["details"]["status"] == 500
    assert error["details"]["body"]["authorization"] == "Bearer ***"
    types = [e["type"] for e in await events_of(secret_client, run["id"])]
    assert "node.retrying" in types and "node.failed" in types
    await assert_no_canary(secret_client, database_url, caplog, [run["id"]])


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets.API_TOKEN | upper }}",
        "{{ secrets.API_TOKEN[0:5] }}",
        "x{{ 'a' ~ secrets.API_TOKEN }}",
        "{{ secrets.API_TOKEN | list }}",
        "{{ secrets.API_TOKEN == 'x' }}",
        "{{ state.known[secrets.API_TOKEN] + 1 }}",
        "{% set t = secrets.API_TOKEN %}{{ t }}",
        "{{ secrets }}",
        "{{ secrets.items() }}",
    ],
)
async def test_a_transformed_secret_is_refused_when_stored(
    template: str, secret_client: httpx.AsyncClient
) -> None:
    """Redaction recognises a secret's value (and its encoded forms), not what a template
    makes of it: a template may only insert a secret as is (DESIGN §8)."""
    definition = {"name": "secret-transformed", "nodes": {"fetch": http_node(template)}}
    response = await secret_client.post("/workflows/validate", json=definition)
    [error] = response.json()["errors"]
    assert error["loc"] == ["nodes", "fetch", "with", "url"]
    assert error["type"] == "secret_not_allowed"
    assert "secret" in error["msg"]
    started = await secret_client.post("/runs", json={"definition": definition, "inputs": {}})
    assert started.status_code == 422, started.text


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets.API_TOKEN }}",
        "Bearer {{ secrets.API_TOKEN }}",
        "{{ secrets['API_TOKEN'] }}",
        "{{ [secrets.API_TOKEN, 1] }}",
        "{{ {'token': secrets.API_TOKEN} }}",
        "{{ secrets.API_TOKEN if state.x else 'none' }}",
        "{{ state.t | default(secrets.API_TOKEN) }}",
        "?t={{ secrets.API_TOKEN | urlencode }}",
    ],
)
async def test_a_secret_inserted_as_is_is_accepted(
    template: str, secret_client: httpx.AsyncClient
) -> None:
    definition = {"name": "secret-as-is", "nodes": {"fetch": http_node(template)}}
    response = await secret_client.post("/workflows/validate", json=definition)
    assert response.json() == {"valid": True, "errors": []}


async def test_an_unknown_secret_fails_the_step_naming_it(
    secret_client: httpx.AsyncClient, server: LoopbackServer
) -> None:
    """Not a missing key rendered as nothing (an empty credential sent on)."""
    server.route("/echo", echo(200))
    url = server.url("/echo") + "?t={{ secrets.NOPE }}"
    definition = {"name": "secret-unknown", "nodes": {"fetch": http_node(url)}}
    run = await run_and_wait(secret_client, {"definition": definition, "inputs": {}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "expression_error"
    assert "unknown secret 'NOPE'" in run["error"]["message"]
    assert server.hits == []


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(
            {"nodes": {"a": {"step": "set", "set": {"t": "{{ secrets.API_TOKEN }}"}}}}, id="set"
        ),
        pytest.param(
            {"state": {"t": "{{ secrets.API_TOKEN }}"}, "nodes": {"a": {"step": "set"}}},
            id="state",
        ),
        pytest.param(
            {"output": "{{ secrets.API_TOKEN }}", "nodes": {"a": {"step": "set"}}}, id="output"
        ),
        pytest.param(
            {
                "nodes": {"a": {"step": "set"}, "b": {"step": "set"}},
                "edges": [
                    {"from": "a", "to": "b", "when": "secrets.API_TOKEN == 'x'"},
                    {"from": "a", "to": "b"},
                ],
            },
            id="when",
        ),
    ],
)
async def test_secrets_are_refused_where_they_would_be_stored(
    where: dict[str, Any],
    secret_client: httpx.AsyncClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a step's `with` sees secrets: elsewhere the template fails, naming `secrets`."""
    caplog.set_level(logging.DEBUG)
    definition = {"name": "secret-stored", **where}
    response = await secret_client.post("/runs/wait", json={"definition": definition, "inputs": {}})
    run_ids = []
    if response.status_code == 422:  # refused before the run exists
        assert "secrets" in response.text, response.text
    else:
        assert response.status_code == 200, response.text
        run = response.json()
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "expression_error", run
        assert "secrets" in run["error"]["message"], run
        run_ids.append(run["id"])
    assert CANARY not in response.text
    await assert_no_canary(secret_client, database_url, caplog, run_ids)


class Explode:
    """A step whose exception quotes its configuration (logged with its traceback)."""

    async def execute(self, ctx: StepContext) -> StepResult:
        raise ValueError(f"cannot use {ctx.config['token']}")


async def test_a_step_exception_quoting_the_secret(
    make_client: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("STEPWISE_SECRET_API_TOKEN", CANARY)
    client = await make_client(registry=StepRegistry({**builtin_steps(), "explode": Explode()}))
    definition = {
        "name": "explodes",
        "nodes": {"boom": {"step": "explode", "with": {"token": "{{ secrets.API_TOKEN }}"}}},
    }
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "step_error"
    assert run["error"]["message"] == "step 'explode' raised ValueError: cannot use ***"
    assert any(r.name == "app.engine.stepexec" for r in caplog.records)  # it was logged
    assert "ValueError: cannot use ***" in caplog.text  # with its traceback, redacted
    await assert_no_canary(client, database_url, caplog, [run["id"]])


ENCODED_CANARY = "cnry+/Zq4=uV x&81é"


async def test_a_secret_is_redacted_in_its_url_encoded_forms(
    make_client: AppFactory,
    server: LoopbackServer,
    tmp_path: Path,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From a secrets file; sent as a query parameter and through ``| urlencode``: the
    server echoes it percent-encoded, and that form is redacted too."""
    caplog.set_level(logging.DEBUG)
    secrets = tmp_path / "secrets"
    secrets.write_text(f"# test secrets\nAPI_TOKEN={ENCODED_CANARY}\n")
    client = await make_client(secrets_file=str(secrets))
    server.route("/echo", echo(200))
    definition = {
        "name": "encoded",
        "nodes": {
            "query": {
                "step": "http",
                "with": {"url": server.url("/echo"), "query": {"token": "{{ secrets.API_TOKEN }}"}},
                "set": {"query": "{{ output }}"},
            },
            "filter": {
                "step": "http",
                "with": {"url": server.url("/echo") + "?t={{ secrets.API_TOKEN | urlencode }}"},
                "set": {"filter": "{{ output }}"},
            },
        },
        "edges": [{"from": "query", "to": "filter"}],
    }
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})

    assert run["status"] == "completed", run["error"]
    [by_query, by_filter] = server.hits_for("/echo")
    assert httpx.URL(by_query.target).params["token"] == ENCODED_CANARY
    assert httpx.URL(by_filter.target).params["t"] == ENCODED_CANARY
    assert run["state"]["query"]["body"]["target"] == "/echo?token=***"
    assert run["state"]["filter"]["body"]["target"] == "/echo?t=***"
    forms = {ENCODED_CANARY, *(httpx.URL(hit.target).query.decode() for hit in server.hits)}
    forms = {form.split("=", 1)[1] for form in forms if "=" in form} | {ENCODED_CANARY}
    dump = json.dumps(
        [await database_text(database_url), (await client.get(f"/runs/{run['id']}")).json()],
        ensure_ascii=False,
    )
    for form in forms:
        assert form not in dump and form not in caplog.text, form


def test_secrets_come_from_the_environment_and_the_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("# comment\nA=from-file\nB = spaced \n\nnot a line\nEMPTY=\n")
    settings = Settings(secrets_file=str(path))
    found = load_secrets(settings, {"STEPWISE_SECRET_A": "from-env", "STEPWISE_SECRET_C": "c"})
    assert found == {"A": "from-env", "B": "spaced", "C": "c"}  # the environment wins


def test_the_redactor_redacts_every_form_of_a_value() -> None:
    redactor = Redactor({"X": "a b/c", "Y": "a b/c+more"}, logs=False)
    assert redactor.json({"k a b/c": ["a b/c", ("a%20b%2Fc", "a+b%2Fc"), 1, None]}) == {
        "k ***": ["***", ["***", "***"], 1, None]
    }
    assert redactor.text("x a b/c+more y") == "x *** y"  # the longer secret whole
    assert not Redactor({}, logs=False)


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param(
            {"a": {"step": "input", "with": {"prompt": "token {{ secrets.API_TOKEN }}"}}},
            id="input-prompt",
        ),
        pytest.param(
            {
                "a": {
                    "step": "interrupt",
                    "with": {"schema": {"type": "string", "enum": ["{{ secrets.API_TOKEN }}"]}},
                }
            },
            id="interrupt-schema",
        ),
        pytest.param(
            {"a": {"step": "fail", "with": {"code": "{{ secrets.API_TOKEN }}", "message": "m"}}},
            id="fail-code",
        ),
        pytest.param(
            {"a": {"step": "handoff", "with": {"to": "{{ secrets.API_TOKEN }}"}}},
            id="handoff-target",
        ),
        pytest.param(
            {
                "a": {
                    "step": "subgraph",
                    "with": {"workflow": "inner", "inputs": {"t": "{{ secrets.API_TOKEN }}"}},
                }
            },
            id="subgraph-inputs",
        ),
        pytest.param(
            {"a": {"step": "interrupt", "with": {"question": "{{ secrets.API_TOKEN }}?"}}},
            id="interrupt-payload",
        ),
        pytest.param(
            {"a": {"step": "fail", "with": {"code": "c", "message": "{{ secrets.API_TOKEN }}"}}},
            id="fail-message",
        ),
    ],
)
async def test_built_in_steps_given_a_secret(
    nodes: dict[str, Any],
    secret_client: httpx.AsyncClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever a step makes of a secret it was given, the value is not stored."""
    caplog.set_level(logging.DEBUG)
    inner = {"name": "inner", "nodes": {"x": {"step": "set", "set": {"got": "{{ inputs.t }}"}}}}
    await store(secret_client, inner)
    response = await secret_client.post(
        "/runs/wait", json={"definition": {"name": "given", "nodes": nodes}, "inputs": {}}
    )
    assert response.status_code in (200, 422), response.text
    run_ids = [response.json()["id"]] if response.status_code == 200 else []
    await assert_no_canary(secret_client, database_url, caplog, run_ids)

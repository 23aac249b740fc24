"""Prompts (DESIGN §9): stored, versioned like workflows, resolved by reference, and every
reference in a definition checked when it is stored, validated or run inline."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import yaml

from app.engine.prompts import ResolvedPrompt, parse_prompt_ref, resolve_prompt
from app.errors import StepwiseError
from tests.conftest import AppFactory, run_and_wait

YAML = {"Content-Type": "application/yaml"}
TRIAGE = "You route support requests for {{ inputs.company }}."


async def create(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("name", "triage")
    body.setdefault("template", TRIAGE)
    return await client.post("/prompts", json=body)


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert body["code"] == code, body
    return body


def locs(body: dict[str, Any], type_: str | None = None) -> list[list[Any]]:
    return [e["loc"] for e in body["errors"] if type_ is None or e["type"] == type_]


# -- storing versions ---------------------------------------------------------------------------


async def test_store_new_versions_and_identical_content(client: httpx.AsyncClient) -> None:
    first = await create(client, description="routes requests")
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["name"] == "triage" and v1["version"] == 1
    assert v1["template"] == TRIAGE and v1["description"] == "routes requests"
    assert len(v1["hash"]) == 64 and v1["created_at"]
    assert first.headers["location"] == "/prompts/triage/versions/1"

    # identical content, however written (key order, YAML): the latest version, 200
    same = await client.post(
        "/prompts", json={"description": "routes requests", "template": TRIAGE, "name": "triage"}
    )
    assert same.status_code == 200, same.text
    assert same.json() == v1
    as_yaml = yaml.safe_dump(
        {"name": "triage", "template": TRIAGE, "description": "routes requests"}
    )
    same_yaml = await client.post("/prompts", content=as_yaml, headers=YAML)
    assert same_yaml.status_code == 200, same_yaml.text
    assert same_yaml.json() == v1

    changed = await create(client, template="You route requests.", description="routes requests")
    assert changed.status_code == 201, changed.text
    assert changed.json()["version"] == 2
    assert changed.json()["hash"] != v1["hash"]
    # the description is content too; and identical means identical to the LATEST version
    described = await create(client, template="You route requests.")
    assert described.status_code == 201 and described.json()["version"] == 3
    back = await create(client, description="routes requests")
    assert back.status_code == 201, back.text
    assert back.json()["version"] == 4
    assert back.json()["hash"] == v1["hash"]


async def test_a_multiline_yaml_template_is_kept_as_written(client: httpx.AsyncClient) -> None:
    document = (
        "name: billing\n"
        "template: |\n"
        "  You handle billing.\n"
        "  {% if state.vip %}Be generous.{% endif %}\n"
    )
    response = await client.post("/prompts", content=document, headers=YAML)
    assert response.status_code == 201, response.text
    assert response.json()["template"] == (
        "You handle billing.\n{% if state.vip %}Be generous.{% endif %}\n"
    )
    assert response.json()["description"] is None


async def test_concurrent_stores_get_distinct_versions(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(create(client, template=f"prompt {i}") for i in range(6)))
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4, 5, 6]


# -- reading ------------------------------------------------------------------------------------


async def test_get_latest_a_fixed_version_and_the_versions(client: httpx.AsyncClient) -> None:
    for i in range(1, 6):
        assert (await create(client, template=f"text {i}")).status_code == 201

    latest = await client.get("/prompts/triage")
    assert latest.status_code == 200, latest.text
    assert (latest.json()["version"], latest.json()["template"]) == (5, "text 5")
    fixed = await client.get("/prompts/triage/versions/2")
    assert fixed.status_code == 200, fixed.text
    assert (fixed.json()["version"], fixed.json()["template"]) == (2, "text 2")

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/prompts/triage/versions", params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 2
        seen += [item["version"] for item in page.json()["items"]]
        assert all(item["template"] == f"text {item['version']}" for item in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]


async def test_list_prompts_latest_version_by_name_with_cursor(client: httpx.AsyncClient) -> None:
    for name in ("c-prompt", "a-prompt", "b-prompt"):
        assert (await create(client, name=name, description=f"about {name}")).status_code == 201
    assert (await create(client, name="b-prompt", template="second")).status_code == 201

    everything = await client.get("/prompts")
    assert everything.status_code == 200, everything.text
    assert everything.json()["next_cursor"] is None
    by_name = {item["name"]: item for item in everything.json()["items"]}
    assert by_name["b-prompt"]["latest_version"] == 2
    assert by_name["b-prompt"]["versions"] == 2
    assert by_name["b-prompt"]["description"] is None  # the latest version's
    assert by_name["a-prompt"]["description"] == "about a-prompt"

    first = await client.get("/prompts", params={"limit": 2})
    assert first.status_code == 200
    assert first.json()["next_cursor"] is not None
    second = await client.get(
        "/prompts", params={"limit": 2, "cursor": first.json()["next_cursor"]}
    )
    assert second.json()["next_cursor"] is None
    names = [item["name"] for item in first.json()["items"] + second.json()["items"]]
    assert sorted(names) == ["a-prompt", "b-prompt", "c-prompt"]
    assert names == [item["name"] for item in everything.json()["items"]]


async def test_an_empty_list_and_bad_list_parameters(client: httpx.AsyncClient) -> None:
    empty = await client.get("/prompts")
    assert empty.status_code == 200
    assert empty.json() == {"items": [], "next_cursor": None}
    problem(await client.get("/prompts", params={"cursor": "@@"}), 422, "invalid_cursor")
    problem(await client.get("/prompts", params={"limit": 501}), 422, "validation_error")
    problem(await client.get("/prompts/triage/versions/0"), 422, "validation_error")


async def test_unknown_prompts_are_404_problems(client: httpx.AsyncClient) -> None:
    problem(await client.get("/prompts/nope"), 404, "prompt_not_found")
    problem(await client.get("/prompts/nope/versions"), 404, "prompt_not_found")
    problem(await client.get("/prompts/nope/versions/1"), 404, "prompt_not_found")
    problem(await client.get("/prompts/Not%20A%20Name"), 404, "prompt_not_found")
    assert (await create(client)).status_code == 201
    body = problem(await client.get("/prompts/triage/versions/2"), 404, "prompt_not_found")
    assert "version 2" in body["detail"]


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Triage", "-x", "with space", "a" * 101, "", "a@1"])
async def test_a_bad_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    body = problem(await create(client, name=name), 422, "invalid_prompt")
    assert locs(body) == [["name"]]


@pytest.mark.parametrize(
    "template",
    [
        "Hello {{ inputs.name ",
        "{% if state.x %}never closed",
        "{{ }}",
        "{% for x in %}{% endfor %}",
    ],
)
async def test_a_template_that_does_not_parse_is_422(
    client: httpx.AsyncClient, template: str
) -> None:
    body = problem(await create(client, template=template), 422, "invalid_prompt")
    assert body["errors"][0]["loc"] == ["template"]
    assert body["errors"][0]["type"] == "bad_template"
    assert (await client.get("/prompts")).json()["items"] == []


async def test_missing_empty_or_unknown_fields_are_422(client: httpx.AsyncClient) -> None:
    unknown = problem(await create(client, temperature=0.2), 422, "invalid_prompt")
    assert locs(unknown, "extra_forbidden") == [["temperature"]]
    missing = problem(await client.post("/prompts", json={"name": "x"}), 422, "invalid_prompt")
    assert locs(missing) == [["template"]]
    empty = problem(await create(client, template=""), 422, "invalid_prompt")
    assert locs(empty) == [["template"]]
    typed = problem(await create(client, template=["a"]), 422, "invalid_prompt")
    assert locs(typed) == [["template"]]
    long = problem(await create(client, description="d" * 10_001), 422, "invalid_prompt")
    assert locs(long) == [["description"]]
    not_an_object = problem(await client.post("/prompts", json=["a"]), 422, "invalid_prompt")
    assert locs(not_an_object) == [[]]
    problem(
        await client.post("/prompts", content=b"{", headers={"Content-Type": "application/json"}),
        422,
        "invalid_body",
    )
    problem(
        await client.post("/prompts", content=b"name: x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert (await client.get("/prompts")).json()["items"] == []


async def test_a_template_over_the_size_limit_is_422(make_client: AppFactory) -> None:
    client = await make_client(max_definition_bytes=1000)
    assert (await create(client, template="é" * 500)).status_code == 201  # 1000 bytes
    body = problem(await create(client, template="é" * 501), 422, "invalid_prompt")
    assert body["errors"] == [
        {
            "loc": ["template"],
            "msg": "the template is 1002 bytes; a prompt may be at most 1000 bytes",
            "type": "too_large",
        }
    ]


async def test_prompts_need_an_api_key_like_every_endpoint(make_client: AppFactory) -> None:
    client = await make_client(api_keys="key-one,key-two")
    for method, path in [
        ("POST", "/prompts"),
        ("GET", "/prompts"),
        ("GET", "/prompts/triage"),
        ("GET", "/prompts/triage/versions"),
        ("GET", "/prompts/triage/versions/1"),
    ]:
        json_body = {"name": "triage", "template": TRIAGE} if method == "POST" else None
        refused = await client.request(method, path, json=json_body)
        problem(refused, 401, "unauthorized")
        wrong = await client.request(
            method, path, json=json_body, headers={"Authorization": "Bearer nope"}
        )
        problem(wrong, 401, "unauthorized")
    key = {"Authorization": "Bearer key-two"}
    stored = await client.post("/prompts", json={"name": "triage", "template": TRIAGE}, headers=key)
    assert stored.status_code == 201, stored.text
    assert (await client.get("/prompts/triage/versions/1", headers=key)).status_code == 200


# -- resolve_prompt (the agent step's entry) ----------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [("triage", ("triage", None)), ("triage@3", ("triage", 3)), ("a.b-c_9@12", ("a.b-c_9", 12))],
)
def test_parse_prompt_ref(ref: str, parsed: tuple[str, int | None]) -> None:
    assert parse_prompt_ref(ref) == parsed


@pytest.mark.parametrize(
    "ref", ["", "Triage", "triage@", "triage@0", "triage@03", "triage@x", "@3", "a@1@2", " a"]
)
def test_parse_prompt_ref_refuses_bad_syntax(ref: str) -> None:
    with pytest.raises(ValueError, match="not a prompt reference"):
        parse_prompt_ref(ref)


async def test_resolve_prompt_latest_pinned_and_unknown(client: httpx.AsyncClient) -> None:
    sessions = client.app.state.engine.sessions  # type: ignore[attr-defined]
    assert (await create(client, template="first")).status_code == 201
    assert (await create(client, template="second {{ state.x }}")).status_code == 201

    assert await resolve_prompt(sessions, "triage") == ResolvedPrompt(
        "triage", 2, "second {{ state.x }}"
    )
    assert await resolve_prompt(sessions, "triage@1") == ResolvedPrompt("triage", 1, "first")
    for ref, says in [
        ("nope", "prompt 'nope' not found"),
        ("nope@1", "prompt 'nope' not found"),
        ("triage@3", "prompt 'triage' has no version 3 (the latest is 2)"),
        ("Bad Ref", "not a prompt reference"),
    ]:
        with pytest.raises(StepwiseError) as caught:
            await resolve_prompt(sessions, ref)
        assert caught.value.code == "unknown_prompt"
        assert says in caught.value.message


# -- references in definitions ------------------------------------------------------------------


def referring(prompt_ref: Any = "greeting", name: str = "greeter") -> dict[str, Any]:
    return {
        "name": name,
        "nodes": {
            "ask": {"step": "set", "with": {"prompt_ref": prompt_ref, "text": "hi"}},
            "done": {"step": "set", "with": {"ok": True}},
        },
        "edges": [{"from": "ask", "to": "done"}],
    }


PROMPT_REF_LOC = ["nodes", "ask", "with", "prompt_ref"]


async def test_a_workflow_may_be_stored_before_its_prompts_but_not_run(
    client: httpx.AsyncClient,
) -> None:
    missing = {
        "loc": PROMPT_REF_LOC,
        "msg": "prompt 'greeting' not found",
        "type": "unknown_prompt",
    }
    stored = await client.post("/workflows", json=referring())
    assert stored.status_code == 201, stored.text
    assert stored.json()["warnings"] == [missing]
    refused = problem(
        await client.post("/runs", json={"workflow": "greeter"}), 422, "unknown_prompt"
    )
    assert refused["errors"] == [missing]
    assert (await client.get("/runs")).json()["items"] == []  # no run, not even a failed one

    assert (await create(client, name="greeting", template="Say hello.")).status_code == 201
    again = await client.post("/workflows", json=referring())
    assert again.status_code == 200 and "warnings" not in again.json()
    run = await run_and_wait(client, {"workflow": "greeter"})
    assert run["status"] == "completed", run
    for ref in ("greeting", "greeting@1"):
        stored = await client.post("/workflows", json=referring(ref, f"g-{ref.replace('@', '')}"))
        assert stored.status_code == 201 and "warnings" not in stored.json(), stored.text
    pinned_too_far = await client.post("/workflows", json=referring("greeting@2", "far"))
    assert pinned_too_far.json()["warnings"] == [
        {
            "loc": PROMPT_REF_LOC,
            "msg": "prompt 'greeting' has no version 2 (the latest is 1)",
            "type": "unknown_prompt",
        }
    ]
    for bad in ("Greeting", 7):  # malformed references are errors
        malformed = problem(
            await client.post("/workflows", json=referring(bad)), 422, "invalid_definition"
        )
        assert locs(malformed, "unknown_prompt") == [PROMPT_REF_LOC]
    # chosen at run time: not checked; null is no reference
    templated = await client.post("/workflows", json=referring("{{ inputs.prompt }}", "dyn"))
    assert templated.status_code == 201, templated.text
    assert "warnings" not in templated.json()
    assert (await client.post("/workflows", json=referring(None, "none"))).status_code == 201


@pytest.mark.parametrize(
    "document",
    [
        {"name": "odd", "nodes": ["a"], "agents": "triage"},
        {"name": "odd", "nodes": {"a": "set"}, "agents": [1, {"system_prompt_ref": 2}]},
        {"name": "odd", "nodes": {"a": {"step": "set", "with": ["prompt_ref"]}}},
        ["not", "an", "object"],
    ],
)
async def test_odd_documents_are_invalid_not_errors(
    client: httpx.AsyncClient, document: Any
) -> None:
    checked = await client.post("/workflows/validate", json=document)
    assert checked.status_code == 200, checked.text
    assert checked.json()["valid"] is False
    assert all(e["type"] != "unknown_prompt" for e in checked.json()["errors"])


async def test_agent_system_prompt_refs_are_checked(client: httpx.AsyncClient) -> None:
    assert (await create(client, name="billing", template="You handle billing.")).status_code == 201
    definition = {
        "name": "support",
        "agents": {
            "triage": {"system_prompt_ref": "support-triage"},
            "billing": {"system_prompt_ref": "billing@1"},
            "refunds": {"system_prompt_ref": "billing@4"},
        },
        "nodes": {
            "triage": {"step": "set", "agent": "triage"},
            "billing": {"step": "set", "agent": "billing"},
            "refunds": {"step": "set", "agent": "refunds"},
        },
    }
    checked = await client.post("/workflows/validate", json=definition)
    assert checked.json() == {"valid": True, "errors": []}  # no error of the definition
    stored = await client.post("/workflows", json=definition)
    assert stored.status_code == 201, stored.text
    unknown = [e for e in stored.json()["warnings"] if e["type"] == "unknown_prompt"]
    assert unknown == [
        {
            "loc": ["agents", "triage", "system_prompt_ref"],
            "msg": "prompt 'support-triage' not found",
            "type": "unknown_prompt",
        },
        {
            "loc": ["agents", "refunds", "system_prompt_ref"],
            "msg": "prompt 'billing' has no version 4 (the latest is 1)",
            "type": "unknown_prompt",
        },
    ]

    # the list form of `agents` is located by index
    listed = {
        **definition,
        "agents": [{"id": "triage", "system_prompt_ref": "nope"}, {"id": "billing"}],
        "nodes": {"triage": {"step": "set", "agent": "triage"}},
    }
    stored = await client.post("/workflows", json={**listed, "name": "listed"})
    assert [e["loc"] for e in stored.json()["warnings"] if e["type"] == "unknown_prompt"] == [
        ["agents", 0, "system_prompt_ref"]
    ]


async def test_validate_reports_prompt_refs_without_storing(client: httpx.AsyncClient) -> None:
    checked = await client.post("/workflows/validate", json=referring("greeting@1"))
    assert checked.status_code == 200, checked.text
    assert checked.json() == {"valid": True, "errors": []}  # (a store would warn)
    assert (await create(client, name="greeting", template="Say hello.")).status_code == 201
    checked = await client.post("/workflows/validate", json=referring("greeting@1"))
    assert checked.json() == {"valid": True, "errors": []}
    assert (await client.get("/workflows")).json()["items"] == []


async def test_an_inline_run_checks_its_prompt_refs(client: httpx.AsyncClient) -> None:
    definition = referring()
    del definition["name"]
    refused = await client.post("/runs", json={"definition": definition})
    body = problem(refused, 422, "invalid_definition")
    assert locs(body, "unknown_prompt") == [["body", "definition", *PROMPT_REF_LOC]]
    assert (await client.get("/runs")).json()["items"] == []  # no run, not even a failed one

    assert (await create(client, name="greeting", template="Say hello.")).status_code == 201
    run = await run_and_wait(client, {"definition": definition})
    assert run["status"] == "completed", run

    # deleting the run leaves the prompt alone (prompts are definitions, never deleted)
    deleted = await client.delete(f"/runs/{run['id']}")
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(f"/runs/{run['id']}")).status_code == 404
    assert (await client.get("/prompts/greeting")).json()["template"] == "Say hello."


async def test_a_stored_workflow_with_a_prompt_ref_runs(client: httpx.AsyncClient) -> None:
    assert (await create(client, name="greeting", template="Say hello.")).status_code == 201
    assert (await client.post("/workflows", json=referring())).status_code == 201
    run = await run_and_wait(client, {"workflow": "greeter"})
    assert run["status"] == "completed", run
    assert run["workflow"] == {"name": "greeter", "version": 1}


@pytest.mark.parametrize(
    "template",
    ["Use {{ secrets.OPENAI_API_KEY }}", "{% if secrets %}x{% endif %}", "{{ secrets['K'] }}"],
)
async def test_a_template_naming_secrets_is_422(client: httpx.AsyncClient, template: str) -> None:
    body = problem(await create(client, template=template), 422, "invalid_prompt")
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["template"], "secret_in_prompt")]
    # a name of the run's scope that merely contains the word is fine
    assert (await create(client, template="{{ state.secrets_count }}")).status_code == 201

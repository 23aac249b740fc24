"""Definition validation: every refusal is a 422 whose errors name the path."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from tests.conftest import AppFactory

Loc = list[str | int]


def refund() -> dict[str, Any]:
    return {
        "name": "refund",
        "inputs": {"type": "object", "required": ["amount"]},
        "state": {"approved": False},
        "nodes": {
            "check": {"step": "set", "with": {"big": "{{ inputs.amount > 100 }}"}},
            "approve": {
                "step": "interrupt",
                "with": {"question": "ok?", "schema": {"type": "object"}},
                "set": {"approved": "{{ output.approved }}"},
            },
            "pay": {
                "step": "http",
                "with": {"method": "POST", "url": "https://payments.example/refunds"},
            },
        },
        "edges": [
            {"from": "check", "to": "approve", "when": "output.big"},
            {"from": "check", "to": "pay"},
            {"from": "approve", "to": "pay", "when": "state.approved"},
        ],
    }


def changed(path: Loc, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    document = copy.deepcopy(base or refund())
    target: Any = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


async def refused(client: httpx.AsyncClient, document: Any) -> list[dict[str, Any]]:
    """POST /workflows refuses it (422 problem), and /workflows/validate agrees (200)."""
    response = await client.post("/workflows", json=document)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["code"] == "invalid_definition"
    assert problem["type"].endswith("/invalid_definition")
    assert problem["title"] and problem["detail"]
    errors: list[dict[str, Any]] = problem["errors"]
    assert errors and all(set(e) >= {"loc", "msg"} and isinstance(e["loc"], list) for e in errors)
    verdict = await client.post("/workflows/validate", json=document)
    assert verdict.status_code == 200
    assert verdict.json() == {"valid": False, "errors": errors}
    return errors


def locs(errors: list[dict[str, Any]]) -> list[Loc]:
    return [e["loc"] for e in errors]


async def test_the_base_definition_is_valid(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/validate", json=refund())
    assert response.json() == {"valid": True, "errors": []}


@pytest.mark.parametrize(
    ("path", "value", "expected_loc", "type_"),
    [
        (["nodes", "pay", "step"], "teleport", ["nodes", "pay", "step"], "unknown_step"),
        (
            ["nodes", "pay", "with", "url"],
            "https://x/{{ inputs.",
            ["nodes", "pay", "with", "url"],
            "bad_template",
        ),
        (
            ["nodes", "pay", "with", "json"],
            {"a": ["{% if %}"]},
            ["nodes", "pay", "with", "json", "a", 0],
            "bad_template",
        ),
        (
            ["nodes", "approve", "set", "approved"],
            "{{ output.approved ",
            ["nodes", "approve", "set", "approved"],
            "bad_template",
        ),
        (["state", "approved"], "{{ 1 + }}", ["state", "approved"], "bad_template"),
        (["output"], "{{ state..x }}", ["output"], "bad_template"),
        (["edges", 0, "when"], "output.big ===", ["edges", 0, "when"], "bad_template"),
        (["edges", 1, "to"], "nowhere", ["edges", 1, "to"], "unknown_node"),
        (["edges", 1, "from"], "nowhere", ["edges", 1, "from"], "unknown_node"),
        (["entry"], "nowhere", ["entry"], "unknown_node"),
        (["inputs"], {"type": "objekt"}, ["inputs", "type"], "invalid_schema"),
        (["inputs", "required"], "amount", ["inputs", "required"], "invalid_schema"),
        (["inputs", "$schema"], 5, ["inputs"], "invalid_schema"),
        (["inputs", "pattern"], "(", ["inputs", "pattern"], "invalid_schema"),
        (
            ["nodes", "approve", "with", "schema"],
            {"type": "object", "properties": {"a": {"minimum": "x"}}},
            ["nodes", "approve", "with", "schema", "properties", "a", "minimum"],
            "invalid_schema",
        ),
        (
            ["nodes", "approve", "with", "schema"],
            ["not", "a", "schema"],
            ["nodes", "approve", "with", "schema"],
            "invalid_schema",
        ),
        (
            ["agents"],
            {"payer": {"handoff_targets": ["ghost"]}},
            ["agents", "payer", "handoff_targets", 0],
            "unknown_agent",
        ),
        (
            ["nodes", "pay", "retry"],
            {"max_attempts": 0},
            ["nodes", "pay", "retry", "max_attempts"],
            "greater_than_equal",
        ),
        (["nodes", "pay", "colour"], "blue", ["nodes", "pay", "colour"], "extra_forbidden"),
        (["nodes", "pay", "timeout_s"], "soon", ["nodes", "pay", "timeout_s"], "float_parsing"),
        (
            ["nodes", "pay", "interrupt_before"],
            "",
            ["nodes", "pay", "interrupt_before"],
            "string_too_short",
        ),
        (["nodes", "bad id!"], {"step": "set"}, ["nodes", "bad id!"], "invalid_node_id"),
        (["name"], "Not A Name", ["name"], "string_pattern_mismatch"),
        (["nodes"], {}, ["nodes"], "too_short"),
        (["version"], 3, ["version"], "extra_forbidden"),
        (
            ["nodes", "pay", "with", "timeout_sec"],
            5,
            ["nodes", "pay", "with", "timeout_sec"],
            "unknown_key",
        ),
    ],
)
async def test_each_refusal_names_its_path(
    client: httpx.AsyncClient, path: Loc, value: Any, expected_loc: Loc, type_: str
) -> None:
    errors = await refused(client, changed(path, value))
    assert expected_loc in locs(errors), errors
    assert type_ in [e["type"] for e in errors if e["loc"] == expected_loc], errors
    assert (await client.get("/workflows/refund")).status_code == 404


async def test_missing_required_fields(client: httpx.AsyncClient) -> None:
    document = refund()
    del document["name"]
    del document["nodes"]["pay"]["step"]
    errors = await refused(client, document)
    assert ["name"] in locs(errors)
    assert ["nodes", "pay", "step"] in locs(errors)


async def test_all_errors_are_reported_at_once(client: httpx.AsyncClient) -> None:
    document = refund()
    document["nodes"]["pay"]["step"] = "teleport"
    document["nodes"]["pay"]["with"]["url"] = "{{ broken"
    document["nodes"]["lonely"] = {"step": "set"}
    document["edges"].append({"from": "pay", "to": "ghost"})
    errors = await refused(client, document)
    assert ["nodes", "pay", "step"] in locs(errors)
    assert ["nodes", "pay", "with", "url"] in locs(errors)
    assert ["nodes", "lonely"] in locs(errors)
    assert ["edges", 3, "to"] in locs(errors)


async def test_unreachable_nodes_but_agent_bound_nodes_count_as_reachable(
    client: httpx.AsyncClient,
) -> None:
    document = refund()
    document["nodes"]["orphan"] = {"step": "set"}
    document["nodes"]["after_orphan"] = {"step": "set"}
    document["edges"].append({"from": "orphan", "to": "after_orphan"})
    errors = await refused(client, document)
    unreachable = [e["loc"] for e in errors if e["type"] == "unreachable"]
    assert unreachable == [["nodes", "orphan"], ["nodes", "after_orphan"]]
    assert "unreachable" in errors[0]["msg"]

    # bound to an agent, a handoff can route there: reachable, and so is what follows it
    document["agents"] = {"helper": {"description": "takes over"}}
    document["nodes"]["orphan"]["agent"] = "helper"
    response = await client.post("/workflows", json=document)
    assert response.status_code == 201, response.text


async def test_cycles_need_a_loop_edge(client: httpx.AsyncClient) -> None:
    document = refund()
    document["edges"].append({"from": "pay", "to": "check"})
    errors = await refused(client, document)
    assert [e for e in errors if e["type"] == "unmarked_cycle"] == [
        {
            "loc": ["edges", 3],
            "msg": "edge 'pay' -> 'check' closes a cycle; mark it `loop: true` if the revisit "
            "is intended",
            "type": "unmarked_cycle",
        }
    ]
    self_loop = refund()
    self_loop["edges"].append({"from": "pay", "to": "pay", "when": "state.again"})
    assert ["edges", 3] in locs(await refused(client, self_loop))

    document["edges"][3]["loop"] = True
    response = await client.post("/workflows", json=document)
    assert response.status_code == 201, response.text


async def test_a_templated_interrupt_schema_is_checked_when_it_is_used(
    client: httpx.AsyncClient,
) -> None:
    document = changed(["nodes", "approve", "with", "schema"], "{{ state.schema }}")
    assert (await client.post("/workflows", json=document)).status_code == 201


@pytest.mark.parametrize("form", ["mapping", "list"])
async def test_agents_as_mapping_or_list(client: httpx.AsyncClient, form: str) -> None:
    agents: dict[str, Any] = {
        "triage": {"handoff_targets": ["billing"]},
        "billing": {"handoff_approval": True},
    }
    document = refund()
    document["agents"] = (
        agents if form == "mapping" else [{"id": k, **v} for k, v in agents.items()]
    )
    document["nodes"]["check"]["agent"] = "triage"
    document["nodes"]["pay"]["agent"] = "billing"
    response = await client.post("/workflows", json=document)
    assert response.status_code == 201, response.text

    bad_target = copy.deepcopy(document)
    if form == "mapping":
        bad_target["agents"]["triage"]["handoff_targets"] = ["ghost"]
        expected: Loc = ["agents", "triage", "handoff_targets", 0]
    else:
        bad_target["agents"][0]["handoff_targets"] = ["ghost"]
        expected = ["agents", "triage", "handoff_targets", 0]
    assert expected in locs(await refused(client, bad_target))

    extra = copy.deepcopy(document)
    if form == "mapping":
        extra["agents"]["billing"]["colour"] = "red"
        expected = ["agents", "billing", "colour"]
    else:
        extra["agents"][1]["colour"] = "red"
        expected = ["agents", 1, "colour"]
    assert expected in locs(await refused(client, extra))


async def test_duplicate_agent_ids(client: httpx.AsyncClient) -> None:
    document = refund()
    document["agents"] = [{"id": "a"}, {"id": "b"}, {"id": "a"}]
    errors = await refused(client, document)
    assert ["agents", 2, "id"] in locs(errors)
    assert "duplicate agent id 'a'" in errors[0]["msg"]

    # as a mapping, a duplicate key is refused by the parser, JSON or YAML alike
    raw = json.dumps(refund())[:-1] + ', "agents": {"a": {}, "a": {"description": "again"}}}'
    for body, media in (
        (raw, "application/json"),
        ("name: refund\nagents:\n  a: {}\n  a: {}\nnodes: {n: {step: set}}\n", "application/yaml"),
    ):
        for path in ("/workflows", "/workflows/validate"):
            response = await client.post(path, content=body, headers={"Content-Type": media})
            errors = response.json()["errors"]
            assert any("duplicate key 'a'" in e["msg"] for e in errors), response.text
            assert [e["loc"] for e in errors] == [["agents", "a"]], response.text
            if path == "/workflows":
                assert response.status_code == 422
                assert response.json()["code"] == "invalid_body"
            else:
                assert response.status_code == 200 and response.json()["valid"] is False


async def test_one_node_per_agent(client: httpx.AsyncClient) -> None:
    document = refund()
    document["agents"] = {"a": {}}
    document["nodes"]["check"]["agent"] = "a"
    document["nodes"]["pay"]["agent"] = "a"
    errors = await refused(client, document)
    assert ["nodes", "pay", "agent"] in locs(errors)


async def test_not_an_object(client: httpx.AsyncClient) -> None:
    for document in ([1, 2], "text", 3, False):
        errors = await refused(client, document)
        assert errors == [
            {"loc": [], "msg": "a workflow definition must be an object", "type": "invalid"}
        ]


async def test_node_count_and_definition_size_limits(make_client: AppFactory) -> None:
    client = await make_client(max_nodes=3, max_definition_bytes=2000)
    document = refund()
    document["nodes"]["extra"] = {"step": "set"}
    errors = await refused(client, document)
    assert errors == [
        {"loc": ["nodes"], "msg": "4 nodes; the limit is 3", "type": "too_many_nodes"}
    ]

    big = changed(["description"], "x" * 2000)
    errors = await refused(client, big)
    assert errors[0]["loc"] == [] and errors[0]["type"] == "too_large"
    assert "the limit is 2000" in errors[0]["msg"]

    # a document far over the limit is refused before it is parsed
    huge = "# " + "padding " * 2000 + "\n" + "name: x\nnodes: {a: {step: set}}\n"
    response = await client.post(
        "/workflows", content=huge, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "too_large"

    ok = await client.post("/workflows", json=refund())
    assert ok.status_code == 201, ok.text


async def test_bad_documents_are_invalid_not_errors(client: httpx.AsyncClient) -> None:
    """Malformed text: 422 on POST /workflows, {valid: false} on /validate."""
    cases = [
        (b"{", "application/json"),
        (b"", "application/json"),
        (b'{"name": NaN}', "application/json"),
        (b'{"name": "x", "state": {"n": 1e999}}', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"name: [unclosed", "application/yaml"),
        (b"a: &x [1]\nb: *x\n", "application/yaml"),
        (b"a: &x {k: 1}\nb:\n  <<: *x\n", "application/yaml"),
        (b"name: x\nstate: {n: .inf}\n", "application/yaml"),
        (b"name: x\nstate: {1: one}\n", "application/yaml"),
        (b"name: x\nstate: {b: !!binary aGVsbG8=}\n", "application/yaml"),
        (b"name: x\nstate: !!set {a, b}\n", "application/yaml"),
        (b"name: !!python/object:os.system x\n", "application/yaml"),
        (b'name: "a\\0b"\n', "application/yaml"),
        (b"--- {a: 1}\n--- {b: 2}\n", "application/yaml"),
        (b"\xff\xfe", "application/yaml"),
        (b"[" * 200 + b"]" * 200, "application/yaml"),
    ]
    for body, media in cases:
        stored = await client.post("/workflows", content=body, headers={"Content-Type": media})
        assert stored.status_code == 422, (body, stored.text)
        assert stored.headers["content-type"] == "application/problem+json"
        assert stored.json()["errors"], body
        checked = await client.post(
            "/workflows/validate", content=body, headers={"Content-Type": media}
        )
        if checked.status_code == 200:
            assert checked.json()["valid"] is False, body
        else:  # refused for every endpoint before routing (too deep, unstorable JSON values)
            assert checked.status_code == 422 and checked.json()["code"] == stored.json()["code"]
    assert (await client.get("/workflows")).json()["items"] == []


async def test_an_http_step_takes_its_documented_keys(client: httpx.AsyncClient) -> None:
    """Every key of the http step's ``with`` is known when stored (``timeout`` as DESIGN
    names it, ``timeout_s`` as the docs do, templated values alike)."""
    document = changed(
        ["nodes", "pay", "with"],
        {
            "method": "POST",
            "url": "https://payments.example/refunds",
            "headers": {"X-Id": "{{ inputs.amount }}"},
            "query": {"a": 1},
            "json": {"amount": "{{ inputs.amount }}"},
            "timeout": "{{ 5 }}",
            "follow_redirects": True,
            "retry_on_4xx": False,
        },
    )
    response = await client.post("/workflows", json=document)
    assert response.status_code == 201, response.text

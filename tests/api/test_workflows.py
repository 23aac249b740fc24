"""The workflows API: storing versions (JSON and YAML), reading them, listing them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.engine.prompts import parse_prompt_ref
from tests.conftest import AppFactory

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "workflows").glob("*.yaml"))
YAML = {"Content-Type": "application/yaml"}


def linear(name: str = "linear", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": {"n": 0},
        "nodes": {
            "a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
            "b": {"step": "set", "with": {"x": "{{ state.n }}"}},
        },
        "edges": [{"from": "a", "to": "b"}],
        **extra,
    }


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def store_referenced_prompts(client: httpx.AsyncClient, document: dict[str, Any]) -> None:
    """The prompts a definition names must exist when it is stored (DESIGN §9)."""
    agents = document.get("agents") or {}
    refs = [
        a.get("system_prompt_ref")
        for a in (agents.values() if isinstance(agents, dict) else agents)
    ]
    refs += [(node.get("with") or {}).get("prompt_ref") for node in document["nodes"].values()]
    for ref in refs:
        if isinstance(ref, str) and "{{" not in ref:
            name, version = parse_prompt_ref(ref)
            for i in range(version or 1):
                stored = await client.post("/prompts", json={"name": name, "template": f"v{i + 1}"})
                assert stored.status_code in (200, 201), stored.text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_shared_examples_store_as_yaml_and_json(
    client: httpx.AsyncClient, path: Path
) -> None:
    text = path.read_text()
    await store_referenced_prompts(client, yaml.safe_load(text))
    first = await client.post("/workflows", content=text, headers=YAML)
    assert first.status_code == 201, first.text
    body = first.json()
    document = yaml.safe_load(text)
    # without an `entry`, the first node is written in: the order of `nodes` is not kept
    # by the content hash nor by every database
    document.setdefault("entry", next(iter(document["nodes"])))
    assert body["name"] == document["name"]
    assert body["version"] == 1
    assert body["definition"] == document
    assert body["hash"] == canonical_hash(document)
    assert first.headers["location"] == f"/workflows/{document['name']}/versions/1"
    # the same content as JSON is identical: the existing version, 200
    again = await client.post("/workflows", json=document)
    assert again.status_code == 200, again.text
    assert again.json() == body


async def test_store_new_versions_and_identical_content(client: httpx.AsyncClient) -> None:
    v1 = await client.post("/workflows", json=linear())
    assert v1.status_code == 201, v1.text
    assert v1.json()["version"] == 1
    assert v1.headers["content-type"] == "application/json"

    # key order and formatting do not matter
    reordered = json.dumps(dict(reversed(list(linear().items()))), indent=4)
    same = await client.post(
        "/workflows", content=reordered, headers={"Content-Type": "application/json"}
    )
    assert same.status_code == 200
    assert same.json()["version"] == 1
    assert same.json()["hash"] == v1.json()["hash"]

    v2 = await client.post("/workflows", json=linear(description="second"))
    assert v2.status_code == 201
    assert v2.json()["version"] == 2
    assert v2.json()["description"] == "second"
    assert v2.json()["hash"] != v1.json()["hash"]

    # identical to an older version is still a new version: only the latest counts
    v3 = await client.post("/workflows", json=linear())
    assert v3.status_code == 201
    assert v3.json()["version"] == 3
    assert v3.json()["hash"] == v1.json()["hash"]

    latest = await client.get("/workflows/linear")
    assert latest.status_code == 200
    assert latest.json() == v3.json()
    pinned = await client.get("/workflows/linear/versions/2")
    assert pinned.status_code == 200
    assert pinned.json() == v2.json()


async def test_yaml_and_json_of_the_same_content_are_identical(client: httpx.AsyncClient) -> None:
    text = """
name: yaml-flow
# a comment, and another key order
edges: [{from: a, to: b}]
nodes:
  a:
    step: set
    with: {when: "2024-01-02", at: 2024-01-02T03:04:05Z, ratio: 1.5, flag: true}
  b: {step: set}
"""
    first = await client.post("/workflows", content=text, headers=YAML)
    assert first.status_code == 201, first.text
    definition = first.json()["definition"]
    # YAML timestamps stay the text they were written as (JSON has no date type)
    assert definition["nodes"]["a"]["with"]["at"] == "2024-01-02T03:04:05Z"
    as_json = await client.post("/workflows", json=definition)
    assert as_json.status_code == 200
    assert as_json.json()["version"] == 1
    assert definition["entry"] == "a"
    for media in ("application/x-yaml", "text/yaml", "application/yaml; charset=utf-8"):
        again = await client.post("/workflows", content=text, headers={"Content-Type": media})
        assert again.status_code == 200, (media, again.text)


async def test_the_first_node_is_the_entry_on_every_backend(client: httpx.AsyncClient) -> None:
    # Postgres JSONB orders keys shorter-first: without the entry written in, "a" would
    # come back first and the run would start there.
    definition = {
        "name": "order",
        "nodes": {
            "zz": {"step": "set", "set": {"seen": "{{ ['zz'] }}"}},
            "a": {"step": "set", "set": {"seen": "{{ state.seen + ['a'] }}"}},
        },
        "edges": [{"from": "zz", "to": "a"}],
    }
    stored = await client.post("/workflows", json=definition)
    assert stored.status_code == 201, stored.text
    assert stored.json()["definition"]["entry"] == "zz"
    assert (await client.post("/workflows", json={**definition, "entry": "zz"})).status_code == 200
    run = await client.post("/runs/wait", json={"workflow": "order", "inputs": {}})
    assert run.status_code == 200, run.text
    assert run.json()["state"] == {"seen": ["zz", "a"]}

    # the same nodes listed the other way round (the entry is another node): a new version
    swapped = {
        "name": "order",
        "nodes": {"a": definition["nodes"]["a"], "zz": definition["nodes"]["zz"]},
        "edges": [{"from": "a", "to": "zz"}],
    }
    assert (await client.post("/workflows", json=swapped)).status_code == 201


async def test_concurrent_stores_get_distinct_versions(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/workflows", json=linear(description=f"d{i}")) for i in range(6))
    )
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4, 5, 6]


async def test_list_workflows_latest_version_by_name_with_cursor(
    client: httpx.AsyncClient,
) -> None:
    for name in ("c-flow", "a-flow", "b-flow", "d-flow", "e-flow"):
        assert (await client.post("/workflows", json=linear(name))).status_code == 201
    assert (await client.post("/workflows", json=linear("b-flow", description="v2"))).is_success

    page = (await client.get("/workflows", params={"limit": 2})).json()
    assert [w["name"] for w in page["items"]] == ["a-flow", "b-flow"]
    b_flow = page["items"][1]
    assert b_flow["latest_version"] == 2 and b_flow["versions"] == 2
    assert b_flow["description"] == "v2"
    names = [w["name"] for w in page["items"]]
    while page["next_cursor"] is not None:
        response = await client.get(
            "/workflows", params={"limit": 2, "cursor": page["next_cursor"]}
        )
        assert response.status_code == 200
        page = response.json()
        names += [w["name"] for w in page["items"]]
    assert names == ["a-flow", "b-flow", "c-flow", "d-flow", "e-flow"]

    everything = (await client.get("/workflows")).json()
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None


async def test_list_versions_newest_first_with_cursor(client: httpx.AsyncClient) -> None:
    for i in range(5):
        assert (await client.post("/workflows", json=linear(description=f"v{i + 1}"))).is_success
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/workflows/linear/versions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["version"] for item in page["items"]]
        assert all(item["definition"]["name"] == "linear" for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]


async def test_unknown_workflows_are_404_problems(client: httpx.AsyncClient) -> None:
    await client.post("/workflows", json=linear())
    for path in (
        "/workflows/nope",
        "/workflows/nope/versions",
        "/workflows/nope/versions/1",
        "/workflows/linear/versions/2",
        "/workflows/Not%20A%20Name",
        # (a NUL in the path is a 422 from the request guards: tests/api/test_nul_characters.py)
    ):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "workflow_not_found"


def encode_cursor(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_bad_version_and_cursor_parameters_are_422(client: httpx.AsyncClient) -> None:
    await client.post("/workflows", json=linear())
    for path, params in (
        ("/workflows/linear/versions/abc", {}),
        ("/workflows/linear/versions/0", {}),
        ("/workflows/linear/versions/99999999999999999999999", {}),
        ("/workflows", {"limit": 0}),
        ("/workflows", {"limit": 501}),
        ("/workflows", {"cursor": "!!!not-base64"}),
        ("/workflows", {"cursor": "MTIz"}),  # a cursor holding a number
        ("/workflows/linear/versions", {"cursor": "InN0ciI"}),  # a cursor holding a string
        ("/workflows/linear/versions", {"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}),  # too big
        ("/workflows/linear/versions", {"cursor": "Mg==x"}),  # "Mg" (2) with a tail
        ("/workflows/linear/versions", {"cursor": "IDI"}),  # " 2": not as it is given out
        *(
            ("/runs", {"cursor": encode_cursor(value)})
            for value in (
                ["2026-12-07", ""],  # no zone, no id
                ["2026-12-07T15:10:32.079499", "a"],  # no zone
                ["2026-12-07T15:10:32.079499+00:00", "\ud800"],
                ["2026-12-07T15:10:32.079499+00:00", "\u0000"],
                ["2026-12-07T15:10:32.079499+00:00", 5],
                ["2026-12-07T15:10:32.079499+00:00", None],
                ["2026-12-07T15:10:32.079499+00:00"],
                ["9999-12-31T23:59:59-01:00", "abc"],  # past the last date once in UTC
                "2026-12-07T15:10:32.079499+00:00",
            )
        ),
    ):
        response = await client.get(path, params=params)
        assert response.status_code == 422, (path, params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["errors"] and all(isinstance(e["loc"], list) for e in problem["errors"])


async def test_a_cursor_is_taken_as_given_with_or_without_its_padding(
    client: httpx.AsyncClient,
) -> None:
    for n in range(3):
        await client.post("/workflows", json={**linear(), "description": f"v{n}"})
    page = (await client.get("/workflows/linear/versions", params={"limit": 1})).json()
    cursor = page["next_cursor"]
    for given in (cursor, cursor + "=" * (-len(cursor) % 4)):
        response = await client.get(
            "/workflows/linear/versions", params={"limit": 1, "cursor": given}
        )
        assert response.status_code == 200, response.text
        assert [v["version"] for v in response.json()["items"]] == [2]


async def test_validate_does_not_store(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows/validate", json=linear())
    assert response.status_code == 200
    assert response.json() == {"valid": True, "errors": []}
    yaml_text = EXAMPLES[0].read_text()
    response = await client.post("/workflows/validate", content=yaml_text, headers=YAML)
    assert response.json() == {"valid": True, "errors": []}
    assert (await client.get("/workflows")).json()["items"] == []
    assert (await client.get("/workflows/linear")).status_code == 404


async def test_stored_workflow_runs_on_the_version_it_started_with(
    make_client: AppFactory,
) -> None:
    client = await make_client()
    await client.post("/workflows", json=linear())
    response = await client.post("/runs/wait", json={"workflow": "linear", "inputs": {}})
    assert response.status_code == 200, response.text
    assert response.json()["workflow"] == {"name": "linear", "version": 1}

"""Definitions with parallel branches: what validation accepts and refuses (422, by path)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_validation import locs, refused


def diamond(**changes: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": "diamond",
        "nodes": {
            "plan": {"step": "set"},
            "a": {"step": "set"},
            "b": {"step": "set"},
            "b2": {"step": "set"},
            "merge": {"step": "set", "join": "all"},
            "after": {"step": "set"},
        },
        "edges": [
            {"from": "plan", "to": ["a", "b"]},
            {"from": "a", "to": "merge"},
            {"from": "b", "to": "b2"},
            {"from": "b2", "to": "merge"},
            {"from": "merge", "to": "after"},
        ],
        "reducers": {"notes": "append"},
        "max_concurrency": 4,
    }
    definition.update(changes)
    return definition


async def test_a_fanout_meeting_at_one_join_is_valid(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows", json=diamond())
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["definition"]["edges"][0]["to"] == ["a", "b"]


async def test_branches_that_do_not_meet_are_refused(client: httpx.AsyncClient) -> None:
    base = diamond()
    # b2 now ends the run instead of going to merge: one branch joins, one ends
    edges = [e for e in base["edges"] if e != {"from": "b2", "to": "merge"}]
    errors = await refused(client, diamond(edges=edges))
    assert locs(errors) == [["edges", 0, "to"]]
    assert errors[0]["type"] == "unjoined_branches"
    assert "'merge'" in errors[0]["msg"]
    assert "the end" in errors[0]["msg"]


async def test_branches_reaching_two_joins_are_refused(client: httpx.AsyncClient) -> None:
    base = diamond()
    base["nodes"]["other"] = {"step": "set", "join": "all"}
    base["edges"] = [e for e in base["edges"] if e != {"from": "b2", "to": "merge"}]
    base["edges"] += [{"from": "b2", "to": "other"}, {"from": "other", "to": "after"}]
    errors = await refused(client, base)
    assert locs(errors) == [["edges", 0, "to"]]
    assert "'merge'" in errors[0]["msg"]
    assert "'other'" in errors[0]["msg"]


async def test_branches_that_all_end_are_valid(client: httpx.AsyncClient) -> None:
    definition = {
        "name": "ends",
        "nodes": {"plan": {"step": "set"}, "a": {"step": "set"}, "b": {"step": "set"}},
        "edges": [{"from": "plan", "to": ["a", "b"]}],
    }
    response = await client.post("/workflows/validate", json=definition)
    assert response.json() == {"valid": True, "errors": []}


async def test_nested_fanout_is_passed_over_to_its_own_join(client: httpx.AsyncClient) -> None:
    definition = diamond()
    definition["nodes"].update(
        {"x": {"step": "set"}, "y": {"step": "set"}, "inner": {"step": "set", "join": "all"}}
    )
    definition["edges"] = [e for e in definition["edges"] if e["from"] != "a"]
    definition["edges"] += [
        {"from": "a", "to": ["x", "y"]},
        {"from": "x", "to": "inner"},
        {"from": "y", "to": "inner"},
        {"from": "inner", "to": "merge"},
    ]
    response = await client.post("/workflows/validate", json=definition)
    assert response.json() == {"valid": True, "errors": []}


async def test_unknown_reducer_is_refused(client: httpx.AsyncClient) -> None:
    errors = await refused(client, diamond(reducers={"notes": "concat"}))
    assert locs(errors) == [["reducers", "notes"]]


async def test_bad_join_and_max_concurrency_are_refused(client: httpx.AsyncClient) -> None:
    definition = diamond(max_concurrency=0)
    definition["nodes"]["merge"]["join"] = "any"
    errors = await refused(client, definition)
    assert sorted(locs(errors)) == [["max_concurrency"], ["nodes", "merge", "join"]]


async def test_list_targets_name_their_index(client: httpx.AsyncClient) -> None:
    base = diamond()
    base["edges"][0]["to"] = ["a", "ghost", "a"]
    errors = await refused(client, base)
    assert ["edges", 0, "to", 1] in locs(errors)
    assert ["edges", 0, "to", 2] in locs(errors)
    empty = diamond()
    empty["edges"][0]["to"] = []
    assert ["edges", 0, "to"] in [loc[:3] for loc in locs(await refused(client, empty))]


async def test_reachability_and_cycles_follow_list_targets(client: httpx.AsyncClient) -> None:
    base = diamond()
    base["edges"][0]["to"] = ["a"]  # b and b2 are now reachable from nowhere
    errors = await refused(client, base)
    assert sorted(locs(errors)) == [["nodes", "b"], ["nodes", "b2"]]
    cyclic = diamond()
    cyclic["edges"].append({"from": "b2", "to": ["plan"]})
    errors = await refused(client, cyclic)
    assert any(e["type"] == "unmarked_cycle" for e in errors)


async def test_a_node_that_fans_out_cannot_pause_after_it(client: httpx.AsyncClient) -> None:
    definition = diamond()
    definition["nodes"]["plan"]["interrupt_after"] = "check the plan"
    errors = await refused(client, definition)
    assert locs(errors) == [["nodes", "plan", "interrupt_after"]]


def one_map(**with_: Any) -> dict[str, Any]:
    return {"name": "mapper", "nodes": {"each": {"step": "map", "with": with_}}}


@pytest.mark.parametrize(
    ("with_", "key", "type_"),
    [
        ({"items": [1]}, "workflow", "invalid_step_config"),
        ({"workflow": "w"}, "items", "invalid_step_config"),
        ({"workflow": "w", "items": "abc"}, "items", "invalid_step_config"),
        ({"workflow": "w", "items": list(range(10_001))}, "items", "too_many_items"),
        ({"workflow": "w", "items": [1], "on_item_failure": "ignore"}, "on_item_failure",
         "invalid_step_config"),
        ({"workflow": "w", "items": [1], "max_concurrency": 0}, "max_concurrency",
         "invalid_step_config"),
        ({"workflow": "w", "items": [1], "version": "1"}, "version", "invalid_step_config"),
        ({"workflow": "w", "items": [1], "input": {}}, "input", "unknown_key"),
    ],
)  # fmt: skip
async def test_a_maps_settings_written_as_they_are_are_checked_when_stored(
    client: httpx.AsyncClient, with_: dict[str, Any], key: str, type_: str
) -> None:
    errors = await refused(client, one_map(**with_))
    assert [(e["loc"], e["type"]) for e in errors] == [(["nodes", "each", "with", key], type_)]


async def test_a_maps_templated_settings_wait_until_rendered(client: httpx.AsyncClient) -> None:
    templated = one_map(workflow="{{ state.w }}", items="{{ state.items }}",
                        max_concurrency="{{ state.n }}")  # fmt: skip
    assert (await client.post("/workflows/validate", json=templated)).json()["valid"] is True


@pytest.mark.parametrize(
    ("to", "loc", "kind"),
    [
        ([], ["edges", 0, "to"], "too_short"),
        (["a", 5], ["edges", 0, "to", 1], "string_type"),
        ({"x": 1}, ["edges", 0, "to"], "string_type"),
        ([f"n{i}" for i in range(101)], ["edges", 0, "to"], "too_long"),
    ],
)
async def test_a_malformed_edge_target_is_refused_at_its_path(
    client: httpx.AsyncClient, to: Any, loc: list[Any], kind: str
) -> None:
    definition = diamond()
    definition["edges"][0]["to"] = to
    response = await client.post("/workflows/validate", json=definition)
    assert response.status_code == 200
    errors = response.json()["errors"]
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, kind)]

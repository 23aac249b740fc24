"""The refund-approval example (examples/workflows) end to end, each of its three paths,
with its payment service on loopback: a small refund is paid at once, a large one after
an approval, and a declined one completes without a refund (its ``refund_id`` is null:
a key the state does not have is null in a template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml
from loopback_server import LoopbackServer
from test_http_runs import json_reply

from tests.conftest import AppFactory, run_and_wait, wait_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workflows" / "refund-approval.yaml"


def refund_workflow(server: LoopbackServer) -> dict[str, Any]:
    definition: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    definition["nodes"]["pay"]["with"]["url"] = server.url("/refunds")
    return definition


async def refund(client: httpx.AsyncClient, definition: dict[str, Any], amount: float) -> Any:
    inputs = {"order_id": "o-7", "amount": amount}
    return await run_and_wait(client, {"definition": definition, "inputs": inputs})


async def approve(client: httpx.AsyncClient, run: dict[str, Any], approved: bool) -> Any:
    response = await client.post(
        f"/runs/{run['id']}/response",
        json={"interrupt_id": run["interrupt"]["id"], "value": {"approved": approved}},
    )
    assert response.status_code == 202, response.text
    return await wait_run(client, run["id"])


async def test_the_three_paths_of_the_refund_example(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/refunds", json_reply({"id": "rf-1"}, status=201))
    definition = refund_workflow(server)

    small = await refund(client, definition, 40)
    assert small["status"] == "completed", small
    assert small["output"] == {"refund_id": "rf-1", "approved": False}

    large = await refund(client, definition, 500)
    assert large["status"] == "interrupted", large
    assert large["interrupt"]["payload"]["question"] == "Refund 500 for order o-7?"
    paid = await approve(client, large, True)
    assert paid["status"] == "completed", paid
    assert paid["output"] == {"refund_id": "rf-1", "approved": True}

    declined = await approve(client, await refund(client, definition, 500), False)
    assert declined["status"] == "completed", declined
    assert declined["output"] == {"refund_id": None, "approved": False}
    assert declined["state"]["status"] == "declined"
    assert len(server.hits_for("/refunds")) == 2  # the declined refund was not paid

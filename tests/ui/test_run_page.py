"""The run page in a real Chromium against a real server: start a run in the page, watch
it pause, answer it in the form, see it complete; reject, cancel, session messages, fork
and resume from a checkpoint, and problem+json errors shown to the user."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page, expect

from tests.conftest import store, wait_run
from tests.ui.helpers import expect_node, expect_status, has_class, open_ui, run_id_from_url

APPROVAL: dict[str, Any] = {
    "name": "ui-approval",
    "inputs": {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number"}},
    },
    "nodes": {
        "prep": {"step": "set", "set": {"amount": "{{ inputs.amount }}"}},
        "ask": {
            "step": "interrupt",
            "with": {
                "question": "Pay {{ inputs.amount }}?",
                "schema": {
                    "type": "object",
                    "required": ["approved", "note"],
                    "properties": {
                        "approved": {"type": "boolean"},
                        "note": {"type": "string"},
                        "level": {"type": "integer", "minimum": 1, "maximum": 3},
                    },
                },
            },
            "set": {"approved": "{{ output.approved }}", "note": "{{ output.note }}"},
        },
        "done": {
            "step": "set",
            "set": {"result": "{{ 'paid' if state.approved else 'declined' }}"},
        },
    },
    "edges": [{"from": "prep", "to": "ask"}, {"from": "ask", "to": "done"}],
}

SESSION: dict[str, Any] = {
    "name": "ui-session",
    "nodes": {
        "chat": {
            "step": "input",
            "with": {"prompt": "Your name?"},
            "set": {"name": "{{ output }}"},
        },
        "greet": {"step": "set", "set": {"greeting": "Hello {{ state.name }}"}},
    },
    "edges": [{"from": "chat", "to": "greet"}],
}

TWO_STEPS: dict[str, Any] = {
    "name": "ui-two-steps",
    "state": {"greeting": "hi"},
    "nodes": {
        "shout": {"step": "set", "set": {"loud": "{{ state.greeting ~ '!' }}"}},
        "count": {"step": "set", "set": {"length": "{{ state.loud | length }}"}},
    },
    "edges": [{"from": "shout", "to": "count"}],
}


async def start_in_page(page: Page, api: httpx.AsyncClient, name: str, inputs: str) -> str:
    await open_ui(page, api, f"/workflows/{name}")
    await expect(page.locator("svg.graph g.node").first).to_be_visible()
    await page.fill("form.start-form textarea[name=inputs]", inputs)
    await page.click("form.start-form button[type=submit]")
    return await run_id_from_url(page)


async def paused_at_ask(page: Page, api: httpx.AsyncClient) -> str:
    await store(api, APPROVAL)
    await open_ui(page, api, "/workflows/ui-approval")
    # the inputs start as the input schema's required properties
    inputs = page.locator("form.start-form textarea[name=inputs]")
    await expect(inputs).to_have_value('{\n  "amount": 0\n}')
    run_id = await start_in_page(page, api, "ui-approval", '{"amount": 250}')
    await expect_status(page, "interrupted")
    await expect_node(page, "prep", "done")
    await expect_node(page, "ask", "paused")
    await expect_node(page, "done", "unreached")
    return run_id


async def test_start_pause_answer_complete(page: Page, api: httpx.AsyncClient) -> None:
    run_id = await paused_at_ask(page, api)
    form = page.locator("form.interrupt-form")
    await expect(form.locator(".question")).to_have_text("Pay 250?")
    # the form is generated from the interrupt's schema: one typed input per property
    await expect(form.locator("input[name=approved]")).to_have_attribute("type", "checkbox")
    await expect(form.locator("input[name=level]")).to_have_attribute("type", "number")
    await form.locator("input[name=approved]").check()
    await form.locator("input[name=note]").fill("looks right")
    await form.get_by_label("responded by").fill("ana")
    await form.locator("button.approve").click()

    await expect_status(page, "completed")
    for node in ("prep", "ask", "done"):
        await expect_node(page, node, "done")
    await expect(page.locator("svg.graph g.edge[data-from=ask][data-to=done]")).to_have_class(
        has_class("taken")
    )
    await expect(page.locator("pre.output")).to_contain_text('"result": "paid"')
    await expect(page.locator("form.interrupt-form")).to_have_count(0)
    # a node's latest output, from the newest checkpoint
    await page.click('svg.graph g.node[data-node="ask"]')
    await expect(page.locator(".node-detail .node-output")).to_contain_text('"note": "looks right"')
    # the live stream delivered the events that followed the answer
    await expect(page.locator('ol.events li[data-type="run.resumed"]')).to_have_count(1)
    await expect(page.locator('ol.events li[data-type="run.completed"]')).to_have_count(1)

    run = await wait_run(api, run_id)
    assert run["status"] == "completed"
    assert run["state"] == {
        "amount": 250,
        "approved": True,
        "note": "looks right",
        "result": "paid",
    }
    events = (
        await api.get(
            f"/runs/{run_id}/events",
            params={"types": "run.resumed"},
            headers={"Accept": "application/json"},
        )
    ).json()["items"]
    assert events[0]["data"]["from"] == "interrupted"


async def test_bad_inputs_are_reported_on_the_start_form(
    page: Page, api: httpx.AsyncClient
) -> None:
    await store(api, APPROVAL)
    await open_ui(page, api, "/workflows/ui-approval")
    inputs = page.locator("form.start-form textarea[name=inputs]")
    await inputs.fill('{"amount": "a lot"}')
    await page.click("form.start-form button[type=submit]")
    error = page.locator("form.start-form .error")
    await expect(error).to_contain_text("422")
    await expect(error.locator("li").first).to_contain_text("amount")
    await inputs.fill("{oops")
    await page.click("form.start-form button[type=submit]")
    await expect(error).to_contain_text("not valid JSON")
    assert (await api.get("/runs")).json()["items"] == []


async def test_a_refused_answer_shows_the_problem_and_the_run_stays_paused(
    page: Page, api: httpx.AsyncClient
) -> None:
    run_id = await paused_at_ask(page, api)
    form = page.locator("form.interrupt-form")
    await form.locator("input[name=approved]").check()
    await form.locator("input[name=note]").fill("n")
    await form.locator("input[name=level]").fill("7")  # the schema says at most 3
    await form.locator("button.approve").click()

    error = form.locator(".error")
    await expect(error).to_contain_text("422")
    assert await error.get_attribute("data-code")
    assert (await api.get(f"/runs/{run_id}")).json()["status"] == "interrupted"

    await form.locator("input[name=level]").fill("2")
    await form.locator("button.approve").click()
    await expect_status(page, "completed")
    assert (await wait_run(api, run_id))["state"]["approved"] is True


async def test_an_answer_without_a_schema_is_json_or_text(
    page: Page, api: httpx.AsyncClient
) -> None:
    definition = {
        "name": "ui-why",
        "nodes": {
            "why": {
                "step": "interrupt",
                "with": {"question": "Why?"},
                "set": {"why": "{{ output }}"},
            }
        },
    }
    await store(api, definition)
    run_id = await start_in_page(page, api, "ui-why", "{}")
    await expect_status(page, "interrupted")
    form = page.locator("form.interrupt-form")
    await form.get_by_label("value").fill("because it is due")  # not JSON: sent as text
    await form.locator("button.approve").click()
    await expect_status(page, "completed")
    assert (await wait_run(api, run_id))["state"] == {"why": "because it is due"}


async def test_reject_fails_the_run(page: Page, api: httpx.AsyncClient) -> None:
    run_id = await paused_at_ask(page, api)
    form = page.locator("form.interrupt-form")
    await form.get_by_label("comment").fill("too much")
    await form.locator("button.reject").click()

    await expect_status(page, "failed")
    await expect(page.locator(".run-error")).to_have_attribute("data-code", "interrupt_rejected")
    await expect_node(page, "ask", "failed")
    await expect_node(page, "done", "unreached")
    run = await wait_run(api, run_id)
    assert run["error"]["code"] == "interrupt_rejected"


async def test_cancel(page: Page, api: httpx.AsyncClient) -> None:
    run_id = await paused_at_ask(page, api)
    cancel = page.locator(".run-header button.cancel")
    await cancel.click()
    await expect(cancel).to_have_text("Really cancel?")
    assert (await api.get(f"/runs/{run_id}")).json()["status"] == "interrupted"
    await cancel.click()

    await expect_status(page, "cancelled")
    await expect(page.locator(".run-header button.cancel")).to_be_hidden()
    assert (await api.get(f"/runs/{run_id}")).json()["status"] == "cancelled"


async def test_session_message(page: Page, api: httpx.AsyncClient) -> None:
    await store(api, SESSION)
    run_id = await start_in_page(page, api, "ui-session", "{}")
    await expect_status(page, "awaiting_input")
    await expect_node(page, "chat", "paused")
    form = page.locator("form.message-form")
    await expect(form.locator(".question")).to_have_text("Your name?")
    await form.locator("textarea[name=message]").fill("Ada")
    await form.locator("button[type=submit]").click()

    await expect_status(page, "completed")
    await expect_node(page, "greet", "done")
    await expect(page.locator("pre.state")).to_contain_text('"greeting": "Hello Ada"')
    assert (await wait_run(api, run_id))["state"] == {"name": "Ada", "greeting": "Hello Ada"}


async def completed_two_steps(page: Page, api: httpx.AsyncClient) -> str:
    await store(api, TWO_STEPS)
    run_id = await start_in_page(page, api, "ui-two-steps", "{}")
    await expect_status(page, "completed")
    await expect(page.locator("button.cp")).to_have_count(3)
    return run_id


async def test_checkpoint_diff_and_fork_with_a_state_patch(
    page: Page, api: httpx.AsyncClient
) -> None:
    run_id = await completed_two_steps(page, api)
    # the checkpoint after `shout`, against its parent: one key added
    await page.click("button.cp[data-seq='2']")
    diff = page.locator("ul.diff li")
    await expect(diff).to_have_count(1)
    await expect(diff).to_have_attribute("data-path", "state.loud")
    await expect(diff).to_have_class(has_class("diff-add"))

    await page.click("button.cp[data-seq='1']")
    await page.fill("form.fork-form textarea[name=state_patch]", '{"greeting": "hello"}')
    await page.click("form.fork-form button[type=submit]")
    fork_id = await run_id_from_url(page, other_than=run_id)
    await expect_status(page, "completed")
    await expect(page.locator(".run-header .meta")).to_contain_text("forked from")
    await expect(page.locator("pre.state")).to_contain_text('"loud": "hello!"')

    fork = await wait_run(api, fork_id)
    first = (await api.get(f"/runs/{run_id}/checkpoints")).json()["items"][0]
    assert fork["parent_run_id"] == run_id
    assert fork["forked_from_checkpoint_id"] == first["id"]
    assert fork["state"] == {"greeting": "hello", "loud": "hello!", "length": 6}
    assert (await wait_run(api, run_id))["state"]["loud"] == "hi!"  # the source is untouched


async def test_a_bad_fork_patch_is_reported(page: Page, api: httpx.AsyncClient) -> None:
    await completed_two_steps(page, api)
    await page.click("button.cp[data-seq='1']")
    await page.fill("form.fork-form textarea[name=state_patch]", "{not json")
    await page.click("form.fork-form button[type=submit]")
    await expect(page.locator(".cp-detail .error")).to_contain_text("not valid JSON")
    await page.fill("form.fork-form textarea[name=state_patch]", "[1, 2]")  # not an object
    await page.click("form.fork-form button[type=submit]")
    await expect(page.locator(".cp-detail .error")).to_contain_text("422")
    await expect(page.locator(".cp-detail .error li code")).to_contain_text("state_patch")


async def test_resume_from_a_checkpoint(page: Page, api: httpx.AsyncClient) -> None:
    run_id = await completed_two_steps(page, api)
    await page.click("button.cp[data-seq='2']")
    await page.click("button.resume-from")

    # the run goes on from there: new checkpoints branch off #2, the stream comes back
    await expect(page.locator("button.cp")).to_have_count(4)
    await expect(page.locator(".cp-tree ul.branches")).to_have_count(1)
    await expect(page.locator('ol.events li[data-type="run.resumed"]')).to_have_count(1)
    await expect_status(page, "completed")
    await expect_node(page, "count", "done")
    assert (await wait_run(api, run_id))["state"]["length"] == 3
    checkpoints = (await api.get(f"/runs/{run_id}/checkpoints")).json()["items"]
    assert [c["seq"] for c in checkpoints] == [1, 2, 3, 4]
    assert checkpoints[3]["parent_id"] == checkpoints[1]["id"]  # a new branch off #2

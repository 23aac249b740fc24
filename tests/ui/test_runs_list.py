"""The runs list (filters, pagination, live status) and the API-key prompt."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.conftest import store, until_status
from tests.ui.conftest import Serve
from tests.ui.helpers import start_run
from tests.ui.test_run_page import APPROVAL, TWO_STEPS

ROWS = "table.runs tbody tr[data-run]"


async def test_filters_pagination_and_live_status(page: Page, api: httpx.AsyncClient) -> None:
    await store(api, APPROVAL)
    await store(api, TWO_STEPS)
    paused = [await start_run(api, "ui-approval", amount=n) for n in (1, 2)]
    done = await start_run(api, "ui-two-steps")
    for run_id in paused:
        await until_status(api, run_id, "interrupted")
    await until_status(api, done, "completed")

    await page.goto(f"{api.base_url}/ui#/runs?limit=2")
    await expect(page.locator(ROWS)).to_have_count(2)
    await page.click("button.more")
    await expect(page.locator(ROWS)).to_have_count(3)
    await expect(page.locator("button.more")).to_be_hidden()

    await page.select_option("form.filters select[name=status]", "interrupted")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator(ROWS)).to_have_count(2)
    await expect(page.locator(f'{ROWS}[data-status="interrupted"]')).to_have_count(2)
    assert "status=interrupted" in page.url

    await page.select_option("form.filters select[name=status]", "")
    await page.fill("form.filters input[name=workflow]", "ui-two-steps")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator(ROWS)).to_have_count(1)
    await expect(page.locator(ROWS)).to_have_attribute("data-run", done)

    # live: a run answered elsewhere changes its row without a reload
    await page.goto(f"{api.base_url}/ui#/runs")
    row = page.locator(f'{ROWS}[data-run="{paused[0]}"]')
    await expect(row).to_have_attribute("data-status", "interrupted")
    interrupt = (await api.get(f"/runs/{paused[0]}")).json()["interrupt"]
    answer = {"interrupt_id": interrupt["id"], "value": {"approved": False, "note": "no"}}
    assert (await api.post(f"/runs/{paused[0]}/response", json=answer)).status_code == 202
    await expect(row).to_have_attribute("data-status", "completed")

    await row.locator("a").first.click()
    await expect(page.locator(".run-header .run-id")).to_have_text(paused[0])


async def test_a_401_asks_for_the_key(page: Page, serve: Serve) -> None:
    base = await serve(api_keys=["right-key"])
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/runs")).status_code == 401
        # the shell and its files hold no data: they load without a key
        assert (await client.get("/ui")).status_code == 200
        assert (await client.get("/ui/static/app.js")).status_code == 200
        headers = {"Authorization": "Bearer right-key"}
        response = await client.post("/workflows", json=TWO_STEPS, headers=headers)
        assert response.status_code == 201
        response = await client.post(
            "/runs", json={"workflow": "ui-two-steps", "inputs": {}}, headers=headers
        )
        run_id = response.json()["id"]

    await page.goto(f"{base}/ui#/runs")
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator(".key-message")).to_contain_text("needs an API key")
    await dialog.locator("input[name=key]").fill("wrong-key")
    await dialog.locator("button[type=submit]").click()
    await expect(dialog.locator(".key-message")).to_contain_text("refused")
    await expect(dialog).to_be_visible()
    await dialog.locator("input[name=key]").fill("right-key")
    await dialog.locator("button[type=submit]").click()

    await expect(dialog).to_be_hidden()
    await expect(page.locator(f'{ROWS}[data-run="{run_id}"]')).to_have_count(1)
    assert await page.evaluate("localStorage.getItem('stepwise.apiKey')") == "right-key"

    # remembered: the run page (its event stream included) works after a reload
    await page.goto(f"{base}/ui#/runs/{run_id}")
    await page.reload()
    await expect(page.locator(".run-header .badge")).to_have_attribute("data-status", "completed")
    await expect(page.locator('ol.events li[data-type="run.completed"]')).to_have_count(1)
    await expect(dialog).to_be_hidden()

    await page.click("#forget-key")
    await expect(dialog).to_be_visible()

"""Shared steps of the inspector's tests."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import Page, expect

from tests.conftest import store

RUN_URL = re.compile(r".*/ui#/runs/([^/?]+)$")


async def open_ui(page: Page, api: httpx.AsyncClient, route: str) -> None:
    await page.goto(f"{api.base_url}/ui#{route}")


async def run_id_from_url(page: Page, other_than: str | None = None) -> str:
    """The id of the run page shown (once it is not ``other_than``'s)."""

    def shown(url: str) -> bool:
        match = RUN_URL.match(url)
        return match is not None and match.group(1) != other_than

    # (no wait_for_function: the page's Content-Security-Policy forbids eval)
    await page.wait_for_url(shown)
    match = RUN_URL.match(page.url)
    assert match is not None, page.url
    return match.group(1)


async def expect_status(page: Page, status: str) -> None:
    await expect(page.locator(".run-header .badge")).to_have_attribute("data-status", status)


async def expect_node(page: Page, node: str, state: str) -> None:
    await expect(page.locator(f'svg.graph g.node[data-node="{node}"]')).to_have_attribute(
        "data-state", state
    )


async def start_run(api: httpx.AsyncClient, workflow: str, **inputs: Any) -> str:
    response = await api.post("/runs", json={"workflow": workflow, "inputs": inputs})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def store_all(api: httpx.AsyncClient, *definitions: dict[str, Any]) -> None:
    for definition in definitions:
        await store(api, definition)


def has_class(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")

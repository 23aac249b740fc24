"""How /ui is served: the shell and its files open without a key (they hold no data),
with a strict Content-Security-Policy; nothing else opens with them."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import AppFactory

FILES = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "sse.js": "text/javascript",
    "graph.js": "text/javascript",
    "app.css": "text/css",
}


@pytest.fixture
async def secured(make_client: AppFactory) -> httpx.AsyncClient:
    return await make_client(api_keys="k1")


async def test_the_shell_and_its_files_load_without_a_key(secured: httpx.AsyncClient) -> None:
    shell = await secured.get("/ui")
    assert shell.status_code == 200
    assert shell.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in shell.headers["content-security-policy"]
    assert '<script type="module" src="/ui/static/app.js">' in shell.text
    for name, media_type in FILES.items():
        response = await secured.get(f"/ui/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media_type)
    assert (await secured.get("/ui/", follow_redirects=False)).headers["location"] == "/ui"


@pytest.mark.parametrize(
    "path", ["/uix", "/ui/runs", "/ui/static", "/runs", "/workflows", "/ui/../runs"]
)
async def test_nothing_else_opens(secured: httpx.AsyncClient, path: str) -> None:
    response = await secured.get(path)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    "asset", ["nope.js", "..%2F..%2Fmain.py", "../__init__.py", "%2e%2e/__init__.py"]
)
async def test_nothing_but_the_assets_is_served(secured: httpx.AsyncClient, asset: str) -> None:
    response = await secured.get(f"/ui/static/{asset}")
    # 404 from the asset route, or 401 where the client resolved the dots itself
    assert response.status_code in (401, 404)
    assert response.headers["content-type"] == "application/problem+json"

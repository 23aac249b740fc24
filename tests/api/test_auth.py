"""API keys: every endpoint but /healthz and /readyz needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import AppFactory

KEYS = "key-one,key-two"
PROTECTED = [
    ("GET", "/workflows"),
    ("POST", "/workflows"),
    ("POST", "/workflows/validate"),
    ("GET", "/workflows/x/versions"),
    ("GET", "/runs"),
    ("POST", "/runs"),
    ("GET", "/runs/x/events"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/nowhere"),
]


@pytest.fixture
async def secured(make_client: AppFactory) -> httpx.AsyncClient:
    return await make_client(api_keys=KEYS)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic a2V5LW9uZQ==",
        "key-one",
        "Bearer key-one2",
    ],
)
async def test_missing_malformed_or_unknown_keys_are_401(
    secured: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in PROTECTED:
        response = await secured.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        problem = response.json()
        assert problem["code"] == "unauthorized" and problem["status"] == 401


async def test_a_valid_key_opens_every_endpoint(secured: httpx.AsyncClient) -> None:
    for key in ("key-one", "key-two"):
        headers = {"Authorization": f"Bearer {key}"}
        response = await secured.post(
            "/workflows", json={"name": "w", "nodes": {"a": {"step": "set"}}}, headers=headers
        )
        assert response.status_code in (200, 201), response.text
        assert (await secured.get("/workflows/w", headers=headers)).status_code == 200
        assert (await secured.get("/metrics", headers=headers)).status_code == 200
        lower = {"Authorization": f"bearer {key}"}  # the scheme is case-insensitive
        assert (await secured.get("/workflows", headers=lower)).status_code == 200


async def test_health_endpoints_stay_open(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/healthz")).status_code == 200
    assert (await secured.get("/readyz")).status_code == 200


async def test_without_keys_nothing_is_asked(client: httpx.AsyncClient) -> None:
    assert (await client.get("/workflows")).status_code == 200

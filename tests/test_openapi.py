"""openapi/openapi.json is the document create_app() serves."""

from __future__ import annotations

import json

from app.main import create_app
from app.openapi import DOCUMENT_PATH, render
from app.settings import Settings

REGENERATE = "python -m app.openapi openapi/openapi.json"


def test_the_kept_document_matches_the_app() -> None:
    served = create_app(Settings()).openapi()
    assert DOCUMENT_PATH.exists(), f"{DOCUMENT_PATH} is missing: run `{REGENERATE}`"
    kept = json.loads(DOCUMENT_PATH.read_text())
    assert kept == served, f"openapi/openapi.json drifted from create_app(): run `{REGENERATE}`"
    assert DOCUMENT_PATH.read_text() == render(served), f"formatting drifted: run `{REGENERATE}`"


def test_errors_are_documented_as_problems() -> None:
    document = create_app(Settings()).openapi()
    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status == "default" or status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        status,
                    )
    store = document["paths"]["/workflows"]["post"]
    assert {"200", "201", "401", "415", "422"} <= set(store["responses"])
    assert set(store["requestBody"]["content"]) == {"application/json", "application/yaml"}
    assert document["paths"]["/healthz"]["get"]["security"] == []

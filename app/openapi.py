"""The OpenAPI document: built from the app, with every error response as problem+json.

``python -m app.openapi [PATH]`` writes it (to stdout without a path); the copy kept in
``openapi/openapi.json`` is checked against ``create_app()`` by ``tests/test_openapi.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.guards import OPEN_PATHS
from app.api.problems import PROBLEM, Problem

DOCUMENT_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"
_PROBLEM_CONTENT = {PROBLEM: {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}}
_ERROR_DESCRIPTIONS = {
    "401": "Unauthorized: a valid API key is required (when API keys are configured)",
    "404": "Not found",
    "409": "Conflict",
    "413": "Payload too large",
    "415": "Unsupported media type",
    "422": "Validation error: `errors[]` names each offending value by its `loc`",
    "default": "An error, as RFC 9457 problem details",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _is_error(status: str) -> bool:
    return status == "default" or status[:1] in ("4", "5")


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """``get_openapi`` for the app, then: error responses are problem+json ``Problem``
    documents; every operation but the open ones takes a bearer API key."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    components["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "One of STEPWISE_API_KEYS; required only when keys are configured.",
        }
    }
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if path in OPEN_PATHS:
                operation["security"] = []
            else:
                operation["security"] = [{"apiKey": []}]
                responses.setdefault("401", {})
            responses.setdefault("default", {})
            for status, response in responses.items():
                if _is_error(status):
                    described = response.get("description")
                    generic = described in (None, "", "Validation Error", "Problem details")
                    response["description"] = (
                        _ERROR_DESCRIPTIONS.get(status, "An error") if generic else described
                    )
                    response["content"] = _PROBLEM_CONTENT
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in json.dumps(document["paths"]):
            schemas.pop(unused, None)
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the OpenAPI document of ``create_app()`` to the path given, or to stdout."""
    from app.main import create_app

    args = sys.argv[1:] if argv is None else argv
    if args and args[0].startswith("-"):
        sys.stdout.write("usage: python -m app.openapi [PATH]  (default: standard output)\n")
        return
    text = render(create_app().openapi())
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()

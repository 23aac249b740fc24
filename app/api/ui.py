"""The web inspector: a static single-page app served at ``/ui``.

The shell and its assets load without an API key (they hold no data); every API call the
page makes sends the key the user entered. The files ship as package data under
``app/ui/static`` and are never fetched from anywhere else.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(str(resources.files("app.ui") / "static"))
_ASSET = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}(/[a-z0-9][a-z0-9_.-]{0,99})?\Z", re.IGNORECASE)
# scripts and styles from this origin only; the page talks to this origin only
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain; charset=utf-8"}


@router.api_route("/ui", methods=["GET", "HEAD"])
async def shell() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/ui/")
async def shell_slash() -> Response:
    return RedirectResponse("/ui", status_code=307)


@router.api_route("/ui/static/{asset:path}", methods=["GET", "HEAD"])
async def asset(asset: str) -> Response:
    path = STATIC / asset
    if not _ASSET.match(asset) or ".." in asset or not path.is_file():
        raise NotFound(f"no UI asset {asset!r}", code="not_found")
    media_type = _TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)

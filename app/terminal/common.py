"""What every client verb shares: the consoles, the common options, the connection that
turns every failure into one line and exit status 1, and JSON in and out."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from stepwise.client import ApiError, Client, StepwiseError

# piped output is not cut at 80 columns: a script gets whole ids
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, highlight=False)

ServerOpt = Annotated[str, typer.Option("--server", envvar="STEPWISE_URL", help="server URL")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="STEPWISE_API_KEY", help="API key")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="watch it live")]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def connected(server: str, api_key: str | None) -> Iterator[Client]:
    """A client; every failure becomes one line and exit status 1."""
    try:
        with Client(server, api_key=api_key) as client:
            yield client
    except ApiError as exc:
        fail(f"{exc.code}: {exc.detail}" + _locations(exc))
    except StepwiseError as exc:
        err.print(escape(str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    except httpx.InvalidURL as exc:
        fail(f"--server {server!r}: {exc}")
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None


def _locations(exc: ApiError) -> str:
    places = [
        ".".join(str(part) for part in error.get("loc", [])) + f": {error.get('msg', '')}"
        for error in exc.errors[:3]
        if isinstance(error, dict)
    ]
    return f" ({'; '.join(places)})" if places else ""


def json_arg(text: str | None, name: str) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            fail(f"{name}: cannot read {text[1:]}: {exc.strerror}")
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"{name} is not valid JSON: {exc}")


def print_json(value: BaseModel | Any) -> None:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    out.print_json(json.dumps(data, ensure_ascii=False))

"""Workflow verbs: ``stepwise apply|workflows|workflow``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from app.terminal.common import (
    JsonOpt,
    KeyOpt,
    ServerOpt,
    connected,
    err,
    fail,
    json_arg,
    out,
    print_json,
)
from app.terminal.render import DEFAULT_SERVER, workflow_lines, workflows_table


def register(cli: typer.Typer) -> None:
    @cli.command("apply")
    def apply_workflow(
        path: Path,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Store a workflow definition from a JSON or YAML file."""
        try:
            text = path.read_text()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
        definition: dict[str, Any] | str = text
        if path.suffix not in (".yaml", ".yml"):
            parsed = json_arg(text, str(path))
            if not isinstance(parsed, dict):
                fail(f"{path}: a definition is a JSON object")
            definition = parsed
        with connected(server, api_key) as client:
            stored = client.store_workflow(definition)
        if as_json:
            print_json(stored)
            return
        out.print(f"stored {stored.name} v{stored.version}")
        for warning in stored.warnings or []:  # e.g. a prompt not stored yet
            where = ".".join(str(part) for part in warning.get("loc", []))
            err.print(escape(f"warning: {where}: {warning.get('msg', '')}"), soft_wrap=True)

    @cli.command("workflows")
    def list_workflows(
        as_json: JsonOpt = False, server: ServerOpt = DEFAULT_SERVER, api_key: KeyOpt = None
    ) -> None:
        """List stored workflows."""
        with connected(server, api_key) as client:
            items = []
            cursor = None
            while True:
                page = client.list_workflows(cursor=cursor, limit=500)
                items += page.items
                cursor = page.next_cursor
                if cursor is None:
                    break
        if as_json:
            print_json([item.model_dump(mode="json") for item in items])
        elif not items:
            out.print("no workflows")
        else:
            out.print(workflows_table(items))

    @cli.command("workflow")
    def show_workflow(
        name: str,
        version: Annotated[int | None, typer.Option()] = None,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Show a stored workflow (the latest version, or the one named)."""
        with connected(server, api_key) as client:
            found = client.get_workflow(name, version)
        if as_json:
            print_json(found)
        else:
            for line in workflow_lines(found):
                out.print(line)

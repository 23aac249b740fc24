"""Human output: run summaries, tables, one line per event, and how to answer a pause."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from stepwise.models import Event, Run, Workflow, WorkflowSummary

DEFAULT_SERVER = "http://127.0.0.1:8000"
STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "interrupted": "magenta",
    "awaiting_input": "magenta",
    "suspended": "cyan",
    "running": "blue",
    "queued": "dim",
}
MAX_VALUE_CHARS = 300


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def compact(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def stamp(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({ago(moment)})"


def command(*words: str, server: str = DEFAULT_SERVER) -> str:
    """A command line to copy (with ``--server`` when it is not the default)."""
    line = ["stepwise", *words]
    if server.rstrip("/") != DEFAULT_SERVER:
        line += ["--server", server]
    return " ".join(shlex.quote(word) for word in line)


def answer_hint(run: Run, server: str) -> str | None:
    """How to move a paused (or failed) run on, as the exact command."""
    if run.status == "interrupted" and run.interrupt is not None:
        value = '{"approved": true}' if run.interrupt.kind == "interrupt" else "null"
        approve = command("respond", run.id, "--value", value, server=server)
        reject = command("respond", run.id, "--reject", server=server)
        return f"{approve}   (or: {reject})"
    if run.status == "awaiting_input":
        return command("message", run.id, "<your message>", server=server)
    if run.status == "suspended":
        return command("resume", run.id, server=server) + "   (to continue now)"
    if run.status == "failed":
        return command("resume", run.id, server=server) + "   (retries the failed node)"
    return None


def run_summary(run: Run, server: str) -> list[str]:
    """The lines of ``stepwise status``."""
    version = f" v{run.workflow.version}" if run.workflow.version is not None else " (inline)"
    lines = [
        f"[bold]run {run.id}[/]  {escape(run.workflow.name)}{version}  {status_text(run.status)}"
    ]
    lines.append(f"node:     {escape(run.current_node or '-')}")
    if run.interrupt is not None:
        interrupt = run.interrupt
        lines.append(
            f"waiting:  {interrupt.kind} {interrupt.id} at {escape(interrupt.node or '-')}: "
            f"{escape(compact(interrupt.payload))}"
        )
    if run.status == "awaiting_input":
        prompt = (run.awaiting_input or {}).get("prompt")
        lines.append("waiting:  a message" + (f": {escape(str(prompt))}" if prompt else ""))
    if run.status == "suspended":
        lines.append(f"resumes:  {stamp(run.resume_at)}")
    hint = answer_hint(run, server)
    if hint is not None:
        lines.append(f"answer:   [bold]{escape(hint)}[/]")
    if run.error is not None:
        where = f" (node {run.error.node})" if run.error.node else ""
        lines.append(
            f"error:    [red]{escape(run.error.code)}[/]: {escape(run.error.message)}{where}"
        )
    if run.status == "completed":
        lines.append(f"output:   {escape(compact(run.output))}")
    lines.append(f"steps:    {run.step_count}")
    lines.append(f"created:  {stamp(run.created_at)}")
    lines.append(f"updated:  {stamp(run.updated_at)}")
    duration = (run.updated_at - run.created_at).total_seconds()
    if run.terminal:
        lines.append(f"took:     {duration:.2f}s")
    if run.parent_run_id:
        lines.append(f"forked from run {run.parent_run_id}")
    return lines


def runs_table(runs: list[Run]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("RUN", "WORKFLOW", "STATUS", "NODE", "STEPS", "UPDATED"):
        table.add_column(column, no_wrap=True)
    for run in runs:
        version = f" v{run.workflow.version}" if run.workflow.version is not None else ""
        table.add_row(
            run.id,
            escape(run.workflow.name) + version,
            status_text(run.status),
            escape(run.current_node or "-"),
            str(run.step_count),
            ago(run.updated_at),
        )
    return table


def workflows_table(workflows: list[WorkflowSummary]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("WORKFLOW", "LATEST", "VERSIONS", "UPDATED", "DESCRIPTION"):
        table.add_column(column)
    for workflow in workflows:
        table.add_row(
            escape(workflow.name),
            f"v{workflow.latest_version}",
            str(workflow.versions),
            ago(workflow.updated_at),
            escape(workflow.description or ""),
        )
    return table


def workflow_lines(workflow: Workflow) -> list[str]:
    nodes = workflow.definition.get("nodes", {})
    lines = [f"[bold]{escape(workflow.name)}[/] v{workflow.version}  ({len(nodes)} nodes)"]
    if workflow.description:
        lines.append(escape(workflow.description))
    for node_id, node in nodes.items():
        step = node.get("step", "?") if isinstance(node, dict) else "?"
        lines.append(f"  {escape(node_id)}: {escape(str(step))}")
    return lines


def token_text(event: Event) -> str | None:
    """The text a token event carries (``message.delta``, or progress with ``text``)."""
    if event.type not in ("message.delta", "step.progress") or not isinstance(event.data, dict):
        return None
    text = event.data.get("text", event.data.get("delta"))
    return text if isinstance(text, str) else None


QUIET_TYPES = frozenset({"checkpoint.saved", "state.updated", "branch.evaluated"})


def event_line(event: Event, verbose: bool = False) -> str | None:
    """One line for an event (None: not shown unless ``verbose``)."""
    data = event.data if isinstance(event.data, dict) else {}
    node = escape(event.node or data.get("node") or "")
    kind = event.type
    when = f"[dim]{event.ts.astimezone(UTC):%H:%M:%S}[/]"
    if kind == "node.started":
        text = f"[blue]▶[/] {node}"
    elif kind == "node.completed":
        text = f"[green]✓[/] {node}"
    elif kind == "node.failed":
        error = data.get("error") or data
        text = f"[red]✗[/] {node}: {escape(compact(error, 200))}"
    elif kind == "node.retrying":
        text = f"[yellow]↻[/] {node} retrying ({escape(compact(data, 120))})"
    elif kind in ("run.interrupted", "run.awaiting_input", "run.suspended"):
        text = f"[magenta]⏸ {kind[4:]}[/] at {node}"
    elif kind == "run.completed":
        text = "[green bold]✔ completed[/]"
    elif kind == "run.failed":
        error = data.get("error") or data
        text = f"[red bold]✘ failed[/] {escape(compact(error, 200))}"
    elif kind == "run.cancelled":
        text = "[yellow bold]cancelled[/]"
    elif kind in ("tool.called", "tool.completed"):
        text = f"  [cyan]⚙ {kind}[/] {escape(compact(data, 160))}"
    elif kind in QUIET_TYPES and not verbose:
        return None
    else:
        text = f"[dim]{kind}[/] {node} {escape(compact(data, 160)) if data else ''}".rstrip()
    return f"{when} {event.seq:>4} {text}"

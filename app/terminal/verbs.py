"""Run verbs: ``stepwise runs|status|events|run|resume|fork|cancel|respond|message``, on
``stepwise.client``.

Human output by default, ``--json`` for scripts. Whatever goes wrong is one line on
stderr and exit status 1: a server that is not there (``cannot reach …``), or an error
the server answered (its code and detail).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape

from app.terminal.common import (
    FollowOpt,
    JsonOpt,
    KeyOpt,
    ServerOpt,
    connected,
    fail,
    json_arg,
    out,
    print_json,
)
from app.terminal.live import LiveView, follow
from app.terminal.render import DEFAULT_SERVER, run_summary, runs_table
from stepwise.client import Client
from stepwise.models import Run


def show_run(run: Run, server: str, as_json: bool) -> None:
    if as_json:
        print_json(run)
        return
    for line in run_summary(run, server):
        out.print(line, soft_wrap=True)


def _asker() -> Callable[[str], str] | None:
    """Prompts for a person at a terminal, or None when stdin is not one."""
    if not sys.stdin.isatty():
        return None
    return lambda prompt: out.input(prompt)


def _exit_for(run: Run) -> None:
    if run.status in ("failed", "cancelled"):
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    """Add the run verbs to the ``stepwise`` command."""

    @cli.command("runs")
    def list_runs(
        status: Annotated[
            list[str] | None, typer.Option("--status", "-s", help="filter (repeatable)")
        ] = None,
        workflow: Annotated[str | None, typer.Option("--workflow", "-w")] = None,
        limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
        cursor: Annotated[str | None, typer.Option(help="the next page's cursor")] = None,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """List runs, newest first."""
        with connected(server, api_key) as client:
            page = client.list_runs(status=status, workflow=workflow, limit=limit, cursor=cursor)
        if as_json:
            print_json(page)
            return
        if not page.items:
            out.print("no runs")
            return
        out.print(runs_table(page.items))
        if page.next_cursor:
            out.print(f"[dim]more: stepwise runs --cursor {page.next_cursor}[/]")

    @cli.command("status")
    def run_status(
        run_id: str,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """A run in short: status, node, what it waits for and how to answer, error, timings."""
        with connected(server, api_key) as client:
            run = client.get_run(run_id)
        show_run(run, server, as_json)

    @cli.command("events")
    def run_events(
        run_id: str,
        follow_: FollowOpt = False,
        types: Annotated[str | None, typer.Option(help="e.g. node.*,run.completed")] = None,
        after: Annotated[int | None, typer.Option(help="only events after this seq")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="every event")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """A run's events; with --follow, live until it ends."""
        view = LiveView(out, json_lines=as_json, verbose=verbose or bool(types))
        with connected(server, api_key) as client:
            if follow_:
                if types:
                    view.consume(client.stream_events(run_id, after=after, types=types))
                    return
                view.last_seq = after or 0
                ask = None if as_json else _asker()
                run = follow(client, view, run_id, server=server, ask=ask, stop_at_pause=False)
                _exit_for(run)
                return
            cursor = None
            while True:
                page = client.list_events(
                    run_id, after=after, types=types, cursor=cursor, limit=500
                )
                for event in page.items:
                    view.show(event)
                cursor = page.next_cursor
                if cursor is None:
                    break
            view.end_tokens()

    @cli.command("run")
    def start_run(
        workflow: str,
        inputs: Annotated[str, typer.Option(help="inputs as JSON, or @file.json")] = "{}",
        follow_: FollowOpt = False,
        wait: Annotated[bool, typer.Option(help="wait until it completes, fails or pauses")] = True,
        version: Annotated[int | None, typer.Option(help="a pinned version")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="every event")] = False,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Start a run of a stored workflow (--follow: watch it live).

        With --follow at a terminal, a pause for an interrupt or a message asks for the
        answer there and then.
        """
        values = json_arg(inputs, "--inputs")
        if not isinstance(values, dict):
            fail("--inputs must be a JSON object")
        with connected(server, api_key) as client:
            if follow_:
                view = LiveView(out, json_lines=as_json, verbose=verbose)
                ask = None if as_json else _asker()
                first = client.stream_run(workflow, inputs=values, version=version, until="paused")
                run = follow(
                    client, view, "", server=server, ask=ask, stop_at_pause=True, first=first
                )
                if not as_json:
                    show_outcome(run)
                _exit_for(run)
                return
            if wait:
                run = client.run_and_wait(workflow, inputs=values, version=version, timeout_s=300)
            else:
                run = client.start_run(workflow, inputs=values, version=version)
        show_run(run, server, as_json)
        _exit_for(run)

    @cli.command("resume")
    def resume(
        run_id: str,
        checkpoint: Annotated[
            str | None, typer.Option(help="an earlier checkpoint to continue from")
        ] = None,
        follow_: FollowOpt = False,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Continue a paused or failed run (from its latest checkpoint, or the one named)."""
        with connected(server, api_key) as client:
            before = _last_seq(client, run_id) if follow_ else 0
            run = client.resume(run_id, checkpoint_id=checkpoint)
            run = _then(client, run, before if follow_ else None, as_json, server)
        show_run(run, server, as_json)
        if follow_:  # (a followed run ended as it did: the exit status says so)
            _exit_for(run)

    @cli.command("fork")
    def fork(
        run_id: str,
        checkpoint: Annotated[
            str | None, typer.Option(help="the checkpoint to fork from (default: the latest)")
        ] = None,
        state_patch: Annotated[
            str | None, typer.Option(help="JSON merge patch on the state")
        ] = None,
        inputs_patch: Annotated[
            str | None, typer.Option(help="JSON merge patch on the inputs")
        ] = None,
        follow_: FollowOpt = False,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """A new run from a checkpoint of this one, optionally with a changed state."""
        state = json_arg(state_patch, "--state-patch")
        new_inputs = json_arg(inputs_patch, "--inputs-patch")
        with connected(server, api_key) as client:
            if checkpoint is None:
                checkpoint = _latest_checkpoint(client, run_id)
            run = client.fork(run_id, checkpoint, state_patch=state, inputs_patch=new_inputs)
            run = _then(client, run, 0 if follow_ else None, as_json, server)
        show_run(run, server, as_json)
        if follow_:  # (a followed run ended as it did: the exit status says so)
            _exit_for(run)

    @cli.command("cancel")
    def cancel(
        run_id: str,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Cancel a run."""
        with connected(server, api_key) as client:
            run = client.cancel(run_id)
        if as_json:
            print_json(run)
        else:
            out.print(f"run {run.id}: cancel requested ({run.status})")

    @cli.command("respond")
    def respond(
        run_id: str,
        value: Annotated[str | None, typer.Option(help="the answer's value as JSON")] = None,
        reject: Annotated[
            bool, typer.Option("--reject", help="reject instead of approving")
        ] = False,
        status: Annotated[
            str | None, typer.Option(help="approved, rejected, timed_out or cancelled")
        ] = None,
        comment: Annotated[str | None, typer.Option()] = None,
        by: Annotated[str | None, typer.Option("--by", help="who answers")] = None,
        interrupt: Annotated[
            str | None, typer.Option(help="the interrupt id (default: the pending one)")
        ] = None,
        follow_: FollowOpt = False,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Answer a run's pending interrupt."""
        answer = json_arg(value, "--value")
        chosen = status or ("rejected" if reject else "approved")
        with connected(server, api_key) as client:
            if interrupt is None:
                pending = client.get_run(run_id)
                if pending.interrupt is None:
                    fail(f"run {run_id} has no pending interrupt (it is {pending.status})")
                interrupt = pending.interrupt.id
            before = _last_seq(client, run_id) if follow_ else 0
            run = client.respond(
                run_id, interrupt, status=chosen, value=answer, comment=comment, responded_by=by
            )
            run = _then(client, run, before if follow_ else None, as_json, server)
        show_run(run, server, as_json)
        if follow_:  # (a followed run ended as it did: the exit status says so)
            _exit_for(run)

    @cli.command("approve", hidden=True)
    def approve(
        run_id: str,
        value: Annotated[str | None, typer.Option(help="the answer's value as JSON")] = None,
        reject: Annotated[bool, typer.Option("--reject")] = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Answer a run's pending interrupt (the older name of ``respond``)."""
        respond(run_id, value=value, reject=reject, server=server, api_key=api_key)

    @cli.command("message")
    def message(
        run_id: str,
        text: Annotated[str, typer.Argument(help="the message")],
        as_value: Annotated[
            bool, typer.Option("--json-value", help="send TEXT parsed as JSON")
        ] = False,
        follow_: FollowOpt = False,
        as_json: JsonOpt = False,
        server: ServerOpt = DEFAULT_SERVER,
        api_key: KeyOpt = None,
    ) -> None:
        """Send a session message to a run awaiting input."""
        sent = json_arg(text, "TEXT") if as_value else text
        with connected(server, api_key) as client:
            before = _last_seq(client, run_id) if follow_ else 0
            run = client.send_message(run_id, sent)
            run = _then(client, run, before if follow_ else None, as_json, server)
        show_run(run, server, as_json)
        if follow_:  # (a followed run ended as it did: the exit status says so)
            _exit_for(run)


def _latest_checkpoint(client: Client, run_id: str) -> str:
    page = client.list_checkpoints(run_id, limit=500)
    while page.next_cursor is not None:
        page = client.list_checkpoints(run_id, cursor=page.next_cursor, limit=500)
    if not page.items:
        fail(f"run {run_id} has no checkpoint")
    return page.items[-1].id


def _then(client: Client, run: Run, after: int | None, as_json: bool, server: str) -> Run:
    """After a command that set a run going: follow it live from the event ``after``
    (the last one before the command), or (None) return it as it is."""
    if after is None:
        return run
    view = LiveView(out, json_lines=as_json)
    view.last_seq = after
    ask = None if as_json else _asker()
    return follow(client, view, run.id, server=server, ask=ask, stop_at_pause=True)


def _last_seq(client: Client, run_id: str) -> int:
    """The run's last event seq (so that a follow shows only what comes after)."""
    last = 0
    cursor = None
    while True:
        page = client.list_events(run_id, cursor=cursor, limit=500)
        if page.items:
            last = page.items[-1].seq
        cursor = page.next_cursor
        if cursor is None:
            return last


def show_outcome(run: Run) -> None:
    if run.status == "completed":
        out.print(f"output: {escape(json.dumps(run.output, ensure_ascii=False, default=str))}")
    elif run.error is not None:
        out.print(f"[red]{escape(run.error.code)}[/]: {escape(run.error.message)}")

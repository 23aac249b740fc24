"""The live view of ``stepwise run --follow`` and ``stepwise events --follow``: one line
per event, model tokens as they arrive, and at a pause, when a person is at the
terminal, a prompt to answer it there and then."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape

from app.terminal.render import answer_hint, compact, event_line, token_text
from stepwise.client import Client, InvalidRequest
from stepwise.models import Event, Run

SUSPENDED_POLL_S = 1.0


class LiveView:
    """Prints events as they come (``json_lines``: one JSON object per line)."""

    def __init__(self, out: Console, *, json_lines: bool = False, verbose: bool = False) -> None:
        self.out = out
        self.json_lines = json_lines
        self.verbose = verbose
        self.last_seq = 0
        self.run_id: str | None = None
        self._mid_line = False  # tokens were printed without a newline yet

    def show(self, event: Event) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        self.run_id = self.run_id or event.run_id
        if self.json_lines:
            self.out.print_json(event.model_dump_json(), indent=None)
            return
        text = token_text(event)
        if text is not None and event.type == "message.delta":
            self.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
            self._mid_line = not text.endswith("\n")
            return
        line = event_line(event, self.verbose)
        if line is None:
            return
        self.end_tokens()
        self.out.print(line, highlight=False, soft_wrap=True)

    def end_tokens(self) -> None:
        if self._mid_line:
            self.out.print()
            self._mid_line = False

    def consume(self, events: Iterator[Event]) -> None:
        for event in events:
            self.show(event)
        self.end_tokens()


Ask = Callable[[str], str]


def follow(
    client: Client,
    view: LiveView,
    run_id: str,
    *,
    server: str,
    ask: Ask | None,
    stop_at_pause: bool,
    first: Iterator[Event] | None = None,
) -> Run:
    """Follow a run until it ends; at a pause, answer it with ``ask`` (a person at the
    terminal), or stop there when ``stop_at_pause`` (printing how to answer it).
    ``first`` is a stream already open (``POST /runs/stream``)."""
    until = "paused" if ask is not None or stop_at_pause else None
    events = first
    while True:
        if events is None:
            events = client.stream_events(run_id, after=view.last_seq or None, until=until)
        view.consume(events)
        events = None
        run_id = view.run_id or run_id
        run = client.get_run(run_id)
        if run.terminal:
            # it may have ended after the stream closed at a pause: show the rest
            view.consume(client.stream_events(run_id, after=view.last_seq or None))
            return run
        if run.status == "suspended":
            _sleep_while_suspended(client, run)
            continue
        if run.status not in ("interrupted", "awaiting_input"):
            continue  # a stream cut short: carry on from the last event
        if ask is None:
            if stop_at_pause:
                hint = answer_hint(run, server)
                if hint and not view.json_lines:
                    view.out.print(
                        f"answer with: [bold]{escape(hint)}[/]", highlight=False, soft_wrap=True
                    )
                return run
            continue
        if not _answer(client, view, run, ask):
            return client.get_run(run_id)


def _sleep_while_suspended(client: Client, run: Run) -> None:
    while run.status == "suspended":
        time.sleep(SUSPENDED_POLL_S)
        run = client.get_run(run.id)


def _answer(client: Client, view: LiveView, run: Run, ask: Ask) -> bool:
    """Ask the person for the answer and send it; False if they left (end of input)."""
    out = view.out
    while True:
        try:
            if run.status == "interrupted" and run.interrupt is not None:
                out.print(
                    f"[magenta]?[/] {escape(run.interrupt.node or '')}: "
                    f"{escape(compact(run.interrupt.payload))}",
                    highlight=False,
                )
                text = ask("answer (JSON value; empty: approve; 'reject'): ").strip()
                status, value = _parse_answer(text)
                try:
                    client.respond(run.id, run.interrupt.id, status=status, value=value)
                except InvalidRequest as exc:
                    out.print(f"[red]{escape(exc.code)}[/]: {escape(exc.detail)}; try again")
                    continue
            else:
                prompt = (run.awaiting_input or {}).get("prompt")
                if prompt:
                    out.print(f"[magenta]?[/] {escape(str(prompt))}", highlight=False)
                text = ask("message: ")
                client.send_message(run.id, text)
        except EOFError:
            out.print()
            return False
        return True


def _parse_answer(text: str) -> tuple[str, Any]:
    if text == "" or text.lower() in ("approve", "approved"):
        return "approved", None
    if text.lower() in ("reject", "rejected"):
        return "rejected", None
    try:
        return "approved", json.loads(text)
    except ValueError:
        return "approved", text

"""Server-sent events: parsing the stream of ``/runs/{id}/events`` into ``Event``s, and
deciding when a stream that ended is done or must be resumed."""

from __future__ import annotations

import json

import httpx

from stepwise.calls import Call, nothing, types_param
from stepwise.errors import CannotConnect, StepwiseError, connect_reason
from stepwise.models import Event, Run

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
PAUSE_EVENTS = frozenset({"run.interrupted", "run.awaiting_input", "run.suspended"})
# a cut stream is resumed after 0.2 s, then 0.4 s, ..., at most this long apart
MAX_BACKOFF_S = 5.0


class SseParser:
    """Feed it the stream's lines; it returns each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return Event.model_validate(json.loads(data))
        if line.startswith(":"):
            return None  # a keep-alive comment
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        # `id` and `event` repeat what the data carries (seq, type)
        return None


def ends_stream(event: Event, until: str | None) -> bool:
    """Whether the server closes the stream after this event."""
    if event.type in TERMINAL_EVENTS:
        return True
    return until == "paused" and event.type in PAUSE_EVENTS


def backoff_s(failures: int) -> float:
    return float(min(MAX_BACKOFF_S, 0.2 * 2 ** max(0, failures - 1)))


class EventStream:
    """The state of one event stream across reconnections."""

    def __init__(
        self,
        run_id: str | None,
        after: int | None,
        types: str | list[str] | None,
        until: str | None,
        max_reconnects: int,
    ) -> None:
        self.run_id = run_id
        self.last = after or 0
        self.types = types_param(types)
        self.until = until
        self.max_reconnects = max_reconnects
        self.failures = 0
        self.connections = 0
        self.done = False
        self.got = 0  # events in the current connection
        self.seen_settled = False  # the run was found settled once: one more connection

    def request(self, start: Call[None] | None) -> Call[None]:
        """The next connection: the start (``POST /runs/stream``) until the run is known,
        then ``GET /runs/{id}/events`` from the last event received."""
        self.connections += 1
        self.got = 0
        if start is not None and self.run_id is None:
            return start
        headers = {"Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = str(self.last)
        params = {"types": self.types, "until": self.until}
        return Call("GET", f"/runs/{self.run_id}/events", nothing, params=params, headers=headers)

    def take(self, event: Event) -> bool:
        """Record a delivered event; True when the stream is over after it."""
        if self.run_id is None:
            self.run_id = event.run_id
        self.last = event.seq
        self.got += 1
        self.failures = 0
        self.done = ends_stream(event, self.until)
        return self.done

    def settled(self, run: Run) -> bool:
        """After a clean close with nothing new: over if the run will send nothing more.
        The first time the run is found settled, not yet: it may have settled after that
        connection closed, its last events unsent; one more connection replays them."""
        ended = run.terminal or (self.until == "paused" and run.paused)
        if ended and not self.seen_settled:
            self.seen_settled = True
            return False
        return ended

    def failed(self, url: str, exc: Exception) -> float:
        """A cut (or a failed reconnect): how long to wait before the next try."""
        self.failures += 1
        if self.failures > self.max_reconnects:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise CannotConnect(url, connect_reason(exc)) from exc
            raise StepwiseError(f"event stream of run {self.run_id} lost: {exc}") from exc
        return backoff_s(self.failures)

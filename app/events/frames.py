"""A run's events as SSE frames, encoded once and shared by every subscriber."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.schemas.runs import EventOut
from app.store.events import StoredEvent

# the event each status change writes, last in its transaction
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
PAUSE_EVENTS = frozenset({"run.interrupted", "run.awaiting_input", "run.suspended"})

SEP = "\n"


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int
    type: str
    frame: bytes  # the complete SSE frame, encoded once and shared by every subscriber


def sse_frame(event: StoredEvent) -> FeedEvent:
    return encode_frame(event.run_id, event.seq, event.type, event.node, event.ts, event.data)


def encode_frame(
    run_id: str, seq: int, type: str, node: str | None, ts: datetime, data: Any
) -> FeedEvent:
    payload = EventOut(run_id=run_id, seq=seq, type=type, node=node, ts=ts, data=data)
    # the JSON has no raw newlines, so it is one data: line
    frame = f"id: {seq}{SEP}event: {type}{SEP}data: {payload.model_dump_json()}{SEP}{SEP}"
    return FeedEvent(seq, type, frame.encode())

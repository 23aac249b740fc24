"""A feed takes the events its own process's runners commit without reading them back,
but only when they follow what it holds; anything else waits for its next read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.events.bus import EventBus
from app.events.feed import RunFeed, RunPosition
from app.events.frames import sse_frame
from app.events.hub import FeedHub
from app.store.models import Event


def row(seq: int, type_: str = "node.started") -> dict[str, Any]:
    return {
        "run_id": "r1",
        "seq": seq,
        "type": type_,
        "node": "a",
        "ts": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "data": {"visit": 1},
    }


def watched_feed(head: int) -> RunFeed:
    hub = FeedHub(EventBus(), None, max_streams=10)  # type: ignore[arg-type]
    feed = RunFeed(hub, "r1")
    feed.head, feed.position = head, RunPosition("running", head)
    return feed


def test_offered_events_that_follow_the_buffer_are_taken_as_read_ones_would_be() -> None:
    feed = watched_feed(3)
    feed.offer([row(4), row(5, "run.completed")], "completed")
    assert feed.head == 5
    assert feed.position == RunPosition("completed", 5)
    taken = feed.since(3)
    assert taken is not None
    assert [e.seq for e in taken] == [4, 5]
    # byte for byte the frames a read from the database makes
    read = [sse_frame(Event(**row(4))), sse_frame(Event(**row(5, "run.completed")))]
    assert [e.frame for e in taken] == [e.frame for e in read]


def test_an_offer_with_a_gap_or_before_the_first_read_is_left_to_the_next_read() -> None:
    feed = watched_feed(3)
    feed.offer([row(5)], "running")  # seq 4 not seen yet
    assert feed.head == 3 and feed.since(3) == []
    unread = RunFeed(FeedHub(EventBus(), None, max_streams=10), "r1")  # type: ignore[arg-type]
    unread.offer([row(1)], "running")
    assert unread.head == 0 and unread.position is None

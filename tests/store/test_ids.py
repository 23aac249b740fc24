"""Row ids are UUIDv7: valid UUIDs, unique, ordered by the millisecond they were made."""

from __future__ import annotations

import time
import uuid

from app.store.ids import new_id


def test_ids_are_version_7_uuids_in_canonical_form() -> None:
    for _ in range(1000):
        text = new_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lowercase, hyphenated, 36 characters
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_carry_their_millisecond_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    after = time.time_ns() // 1_000_000
    stamp = uuid.UUID(first).int >> 80
    assert before <= stamp <= after
    assert first < second  # text order is time order across milliseconds


def test_ids_made_in_the_same_millisecond_differ() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)

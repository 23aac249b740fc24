"""Row ids are UUIDv7: valid UUIDs, unique, ordered by the millisecond they were made."""

from __future__ import annotations

import time
import uuid

import pytest

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


def test_ids_made_in_the_same_millisecond_differ_in_every_random_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instant = 1_796_000_000_123_456_789
    monkeypatch.setattr(time, "time_ns", lambda: instant)
    values = [uuid.UUID(new_id()).int for _ in range(2_000)]
    assert len(set(values)) == len(values)
    assert {v >> 80 for v in values} == {instant // 1_000_000}
    varying = 0
    for value in values[1:]:
        varying |= value ^ values[0]
    # all 74 random bits vary, and only they: not the time, the version or the variant
    assert varying == ((1 << 80) - 1) ^ (0xF << 76) ^ (0b11 << 62)

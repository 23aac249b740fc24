"""Ids of stored rows: UUIDs of version 7 (RFC 9562), time-ordered.

The first 48 bits are the Unix time in milliseconds, the other 74 (beside the version and
variant bits) come from the OS's random source. Ids made close in time sort close
together, so the primary-key indexes of runs and checkpoints grow at their right edge
instead of touching a random page per insert (fewer pages dirtied and written to the
WAL); they are still unguessable. Clients treat ids as opaque strings.
"""

from __future__ import annotations

import os
import time

_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0b11 << 62)


def new_id() -> str:
    """A new UUIDv7 in its canonical text form (36 characters, lowercase)."""
    random = int.from_bytes(os.urandom(10), "big") & _RANDOM_BITS
    value = (time.time_ns() // 1_000_000) << 80 | _VERSION_AND_VARIANT | random
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

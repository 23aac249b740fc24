"""Checkpoints: a tree per run (``parent_id``), each a full snapshot or a delta
against its run's latest snapshot (see ``app.store.deltas``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased, defer

from app.store import deltas
from app.store.database import Executor, driver_executemany, encode_json
from app.store.models import Checkpoint, table, utcnow

# A new snapshot is written when the cumulative delta grows past this share of the
# snapshot's size, so deltas stay small and a read needs at most two rows.
SNAPSHOT_RATIO = 0.5
MIN_SNAPSHOT_BYTES = 2048


@dataclass(slots=True)
class CheckpointChain:
    """The snapshot that the next checkpoint's delta is taken against."""

    base_id: str | None = None
    base_doc: Any = None
    base_bytes: int = 0

    @classmethod
    def snapshot(cls, checkpoint_id: str, doc: Any) -> CheckpointChain:
        """The chain after a full snapshot of ``doc`` was stored as ``checkpoint_id``."""
        return cls(checkpoint_id, doc, len(encode_json(doc)))

    def encode(self, checkpoint_id: str, doc: Any) -> tuple[str | None, Any, CheckpointChain]:
        """``(base_id, data)`` to store for ``doc``, and the chain to use after it is stored."""
        if self.base_id is not None:
            delta = deltas.diff(self.base_doc, doc)
            size = len(encode_json(delta)) if delta is not None else 2
            if size <= max(MIN_SNAPSHOT_BYTES, self.base_bytes * SNAPSHOT_RATIO):
                return self.base_id, delta, self
        return None, doc, CheckpointChain.snapshot(checkpoint_id, doc)


@dataclass(slots=True)
class CheckpointRow:
    id: str
    run_id: str
    parent_id: str | None
    seq: int
    last_node: str | None
    next_node: str | None
    status: str
    steps_completed: int
    created_at: datetime = field(default_factory=utcnow)


CHECKPOINT_INSERT = insert(table(Checkpoint))
CHECKPOINT_INSERT_SQL = (
    "INSERT INTO checkpoints (id, run_id, parent_id, seq, last_node, next_node, status,"
    " steps_completed, base_id, data, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)


async def insert_checkpoints(
    session: Executor,
    rows: Sequence[tuple[CheckpointRow, str | None, Any]],
    *,
    direct: bool = False,
) -> None:
    """Insert checkpoints, each ``(row, base_id, data)``, in order (a delta's base may be
    an earlier one of them): one constant statement, executemany parameters. ``direct``:
    as for ``insert_events`` (straight through the driver)."""
    if not rows:
        return
    if direct and isinstance(session, AsyncConnection):
        await driver_executemany(
            session,
            CHECKPOINT_INSERT_SQL,
            [
                (
                    row.id,
                    row.run_id,
                    row.parent_id,
                    row.seq,
                    row.last_node,
                    row.next_node,
                    row.status,
                    row.steps_completed,
                    base_id,
                    encode_json(data).decode(),
                    row.created_at,
                )
                for row, base_id, data in rows
            ],
        )
        return
    params = [
        {
            "id": row.id,
            "run_id": row.run_id,
            "parent_id": row.parent_id,
            "seq": row.seq,
            "last_node": row.last_node,
            "next_node": row.next_node,
            "status": row.status,
            "steps_completed": row.steps_completed,
            "base_id": base_id,
            "data": data,
            "created_at": row.created_at,
        }
        for row, base_id, data in rows
    ]
    await session.execute(CHECKPOINT_INSERT, params)


async def insert_checkpoint(
    session: AsyncSession, row: CheckpointRow, base_id: str | None, data: Any
) -> None:
    await insert_checkpoints(session, [(row, base_id, data)])


_BASE = aliased(Checkpoint)
# built once: its compiled form is cached, only the parameter changes
_LOAD = (
    select(Checkpoint, _BASE.data)
    .outerjoin(_BASE, _BASE.id == Checkpoint.base_id)
    .where(Checkpoint.id == bindparam("checkpoint_id"))
)


async def load(
    session: AsyncSession, checkpoint_id: str
) -> tuple[Checkpoint, Any, CheckpointChain] | None:
    """The checkpoint, its full document, and the chain to continue writing after it."""
    found = (await session.execute(_LOAD, {"checkpoint_id": checkpoint_id})).first()
    if found is None:
        return None
    return with_doc(*found)


class CorruptCheckpoint(Exception):
    """A stored checkpoint whose document cannot be read (changed outside the service)."""

    def __init__(self, checkpoint_id: str, why: str) -> None:
        super().__init__(f"checkpoint {checkpoint_id} cannot be read: {why}")
        self.checkpoint_id = checkpoint_id


def with_doc(checkpoint: Checkpoint, base_data: Any) -> tuple[Checkpoint, Any, CheckpointChain]:
    """A checkpoint read with its snapshot's data: its full document and its chain;
    ``CorruptCheckpoint`` if they do not make a run's document."""
    if checkpoint.base_id is None:
        doc = checkpoint.data
        chain = CheckpointChain.snapshot(checkpoint.id, doc)
    else:
        try:
            doc = deltas.apply(base_data, checkpoint.data)
        except (TypeError, ValueError, LookupError, AttributeError) as exc:
            raise CorruptCheckpoint(checkpoint.id, f"its delta does not apply ({exc!r})") from exc
        chain = CheckpointChain.snapshot(checkpoint.base_id, base_data)
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not (frames and isinstance(frames, list) and isinstance(frames[0], dict)):
        raise CorruptCheckpoint(checkpoint.id, "it holds no run frames")
    if "state" not in frames[0]:
        raise CorruptCheckpoint(checkpoint.id, "it holds no state")
    return checkpoint, doc, chain


async def list_for_run(
    session: AsyncSession, run_id: str, *, after: int, limit: int
) -> list[Checkpoint]:
    stmt = (
        select(Checkpoint)
        .options(defer(Checkpoint.data, raiseload=True))
        .where(Checkpoint.run_id == run_id, Checkpoint.seq > after)
        .order_by(Checkpoint.seq)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())

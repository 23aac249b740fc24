"""The Postgres statements of the write that records a run's progress, straight through
asyncpg (``app.store.progress`` decides when they apply).

Built as SQL text once per shape of the run's values (a handful of shapes: a step, a
flush, a pause, an end) and prepared by asyncpg once per connection, with JSON encoded
once here: SQLAlchemy's statement building, cache keys and bind processing were about a
fifth of the server's CPU per step.

``fenced_update`` is the fenced ``UPDATE runs … RETURNING`` alone, for a write inside a
transaction begun by the caller. ``one_statement`` is the whole write as one statement —
the update and, fed by its ``RETURNING``, the inserts of the checkpoints and the events
(data-modifying CTEs) — for a write that is its own transaction: Postgres commits it by
itself, with no ``BEGIN`` or ``COMMIT`` round trip; when the fence fails, the update
returns no row and nothing is inserted.

``run_and_head`` is the read an unlocked command fences such a write against: the run and
its head checkpoint in one statement, outside any transaction; it is also how the API reads
a run's resource (``app.engine.resources.read_resource``).

``insert_new_run`` is a run's start: its row, first checkpoint and first events in one
statement (data-modifying CTEs fed by the run's ``RETURNING``), committing by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON
from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics
from app.store.checkpoints import CheckpointChain, CheckpointRow, with_doc
from app.store.database import driver_fetchrow, encode_json
from app.store.events import BATCH, NewEvent, stored_json
from app.store.models import Checkpoint, Run, detached
from app.store.runs import HELD, Lease

RUN_KEYS = tuple(attr.key for attr in Run.__mapper__.column_attrs)
_COLUMN_NAMES = {attr.key: attr.columns[0].name for attr in Run.__mapper__.column_attrs}
_JSON_KEYS = frozenset(
    attr.key for attr in Run.__mapper__.column_attrs if isinstance(attr.columns[0].type, JSON)
)


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A write's fence for commands: the run must still have ``status`` (their
    transaction has usually locked its row) and, when ``versions`` is given, still its
    ``(event_seq, checkpoint_seq, lease_token)``: the fence of a write made after an
    unlocked read, which every other change of the run since then fails."""

    status: str
    versions: tuple[int, int, int] | None = None


Fence = Lease | Unchanged


@dataclass(frozen=True, slots=True)
class Shape:
    """What the SQL of a write depends on (besides its parameters)."""

    keys: tuple[str, ...]  # the run's columns set, in order
    leased: bool  # fenced by a lease (else by an unchanged status)
    versioned: bool  # ...and unchanged versions
    settles: bool  # returns the whole row
    notify: bool  # the write has events: NOTIFY their watchers on commit


async def fenced_update(
    connection: AsyncConnection,
    run_id: str,
    fence: Fence,
    values: dict[str, Any],
    now: datetime,
    events: int,
    checkpoints: Sequence[CheckpointRow],
    *,
    settles: bool,
) -> Sequence[Any] | None:
    """The run's row advanced by ``events`` and ``checkpoints`` and set to ``values``
    while ``fence`` holds: ``RETURNING checkpoint_seq, event_seq, status`` (then, when
    ``settles``, every column of ``RUN_KEYS``), or None."""
    shape, args = _update(run_id, fence, values, now, events, checkpoints, settles)
    return await driver_fetchrow(connection, _update_sql(shape), args)


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of ``events`` for ``one_statement``: one event, or a write's batch
    (``app.store.events``); its data is ``head``, then (when ``saved`` > 0: the write's
    ``checkpoint.saved`` names the ``saved``-th checkpoint) that checkpoint's seq and
    ``tail``. ``upto``: the events of the statement up to and including this row's."""

    type: str
    node: str | None
    ts: datetime
    head: str
    tail: str
    saved: int
    upto: int


async def one_statement(
    connection: AsyncConnection,
    run_id: str,
    fence: Fence,
    values: dict[str, Any],
    now: datetime,
    checkpoints: Sequence[tuple[CheckpointRow, str | None, Any]],
    events: Sequence[StoredRow],
    count: int,
    *,
    settles: bool,
) -> Sequence[Any] | None:
    """``fenced_update`` with the inserts of ``checkpoints`` (``(row, base_id, data)``,
    numbered here from the updated ``checkpoint_seq``) and of the rows of ``count``
    events (numbered from the updated ``event_seq``) in the same statement."""
    rows = [row for row, _, _ in checkpoints]
    shape, args = _update(run_id, fence, values, now, count, rows, settles)
    # the rows as two JSON arrays (text): asyncpg encodes an array parameter element by
    # element, with up to three ``isinstance`` checks against ABCs each, about 100 µs of
    # CPU for a ten-step write's sixteen arrays against ~10 µs for this
    args.append(
        _json_rows(
            [
                row.id,
                row.parent_id,
                row.last_node,
                row.next_node,
                row.status,
                row.steps_completed,
                base_id,
                encode_json(data).decode(),
                row.created_at,
            ]
            for row, base_id, data in checkpoints
        )
    )
    args.append(_json_rows([e.type, e.node, e.ts, e.head, e.tail, e.saved, e.upto] for e in events))
    return await driver_fetchrow(connection, _one_statement_sql(shape), args)


def _json_rows(rows: Iterable[list[Any]]) -> str:
    """``rows`` as one JSON array (datetimes in RFC 3339, naive ones taken as UTC)."""
    return orjson.dumps(list(rows), option=orjson.OPT_NAIVE_UTC).decode()


def _update(
    run_id: str,
    fence: Fence,
    values: dict[str, Any],
    now: datetime,
    events: int,
    checkpoints: Sequence[CheckpointRow],
    settles: bool,
) -> tuple[Shape, list[Any]]:
    """The shape and the parameters of ``_update_sql`` for this write."""
    if checkpoints:
        values = {**values, "head_checkpoint_id": checkpoints[-1].id}
    args: list[Any] = [run_id, now, events, len(checkpoints)]
    args.extend(
        encode_json(value).decode() if key in _JSON_KEYS else value for key, value in values.items()
    )
    if isinstance(fence, Lease):
        args.extend((fence.owner, fence.token))
    else:
        args.append(fence.status)
        args.extend(fence.versions or ())
    versioned = isinstance(fence, Unchanged) and fence.versions is not None
    return Shape(tuple(values), isinstance(fence, Lease), versioned, settles, events > 0), args


def _fence_params(shape: Shape) -> int:
    """How many parameters the fence of ``_update_sql`` takes (after the values)."""
    return 2 if shape.leased else 4 if shape.versioned else 1


@functools.lru_cache(maxsize=64)
def _update_sql(shape: Shape) -> str:
    """``UPDATE runs … RETURNING``: $1 the run, $2 now, $3 events, $4 checkpoints, then
    the values in ``shape.keys`` order, then the fence's."""
    sets = ["updated_at = $2", "event_seq = event_seq + $3", "checkpoint_seq = checkpoint_seq + $4"]
    sets += [f"{_COLUMN_NAMES[key]} = ${i}" for i, key in enumerate(shape.keys, start=5)]
    n = 5 + len(shape.keys)  # the fence's first parameter
    if shape.leased:
        held = ", ".join(f"'{status}'" for status in HELD)  # as ``runs.lease_guard``
        where = f"id = $1 AND status IN ({held}) AND lease_owner = ${n} AND lease_token = ${n + 1}"
    else:
        where = f"id = $1 AND status = ${n}"
        if shape.versioned:
            where += (
                f" AND event_seq = ${n + 1} AND checkpoint_seq = ${n + 2}"
                f" AND lease_token = ${n + 3}"
            )
    # named apart from the whole row's columns, which a settling write returns after them
    returning = ["checkpoint_seq AS head_seq", "event_seq AS last_seq", "status AS now_status"]
    if shape.settles:
        returning += [_COLUMN_NAMES[key] for key in RUN_KEYS]
    if shape.notify:
        returning.append(
            "pg_notify('stepwise_events', id || ':' || event_seq::text || ':' || status)"
        )
    return f"UPDATE runs SET {', '.join(sets)} WHERE {where} RETURNING {', '.join(returning)}"


@functools.lru_cache(maxsize=64)
def _one_statement_sql(shape: Shape) -> str:
    """``_update_sql`` as the first of three data-modifying CTEs; the checkpoints and
    the events follow the update's parameters, each a JSON array of rows (``_json_rows``)
    in the order of their columns here."""
    a = 5 + len(shape.keys) + _fence_params(shape)  # the checkpoints' parameter
    seq_of = "u.head_seq - $4 + "  # the k-th checkpoint's seq
    return (
        f"WITH u AS ({_update_sql(shape)}), "
        "c AS (INSERT INTO checkpoints (id, run_id, parent_id, seq, last_node, next_node,"
        " status, steps_completed, base_id, data, created_at)"
        f" SELECT x.r->>0, $1, x.r->>1, {seq_of}x.k, x.r->>2, x.r->>3, x.r->>4,"
        " (x.r->>5)::int, x.r->>6, (x.r->>7)::json, (x.r->>8)::timestamptz"
        f" FROM u, jsonb_array_elements(${a}::text::jsonb) WITH ORDINALITY AS x(r, k)), "
        "e AS (INSERT INTO events (run_id, seq, type, node, ts, data)"
        " SELECT $1, u.last_seq - $3 + (x.r->>6)::int, x.r->>0, x.r->>1,"
        " (x.r->>2)::timestamptz, ((x.r->>3) || CASE WHEN (x.r->>5)::int > 0"
        f" THEN ({seq_of}(x.r->>5)::int)::text ELSE '' END || (x.r->>4))::json"
        f" FROM u, jsonb_array_elements(${a + 1}::text::jsonb) AS x(r)) "
        "SELECT * FROM u"
    )


_CHECKPOINT_KEYS = tuple(attr.key for attr in Checkpoint.__mapper__.column_attrs)
_RUN_AND_HEAD = (
    "SELECT "
    + ", ".join(f"r.{_COLUMN_NAMES[key]}" for key in RUN_KEYS)
    + ", "
    + ", ".join(f"c.{attr.columns[0].name}" for attr in Checkpoint.__mapper__.column_attrs)
    + ", b.data FROM runs r LEFT JOIN checkpoints c ON c.id = r.head_checkpoint_id"
    " LEFT JOIN checkpoints b ON b.id = c.base_id WHERE r.id = $1"
)


async def run_and_head(
    connection: AsyncConnection, run_id: str
) -> tuple[Run, tuple[Checkpoint, Any, CheckpointChain] | None] | None:
    """The run and its head checkpoint (with its full document and chain) in one read,
    with no transaction of its own: a snapshot the caller's write fences against
    (``Unchanged.versions``). None if there is no such run."""
    row = await driver_fetchrow(connection, _RUN_AND_HEAD, [run_id])
    if row is None:
        return None
    cut = len(RUN_KEYS)
    run = detached(Run, dict(zip(RUN_KEYS, row[:cut], strict=True)))
    if row[cut] is None:  # no checkpoint yet
        return run, None
    head = row[cut : cut + len(_CHECKPOINT_KEYS)]
    checkpoint = detached(Checkpoint, dict(zip(_CHECKPOINT_KEYS, head, strict=True)))
    return run, with_doc(checkpoint, row[-1])


# the model's own (constant) defaults, which SQLAlchemy would fill in for an ORM insert
_NEW_RUN_DEFAULTS = {
    attr.key: attr.columns[0].default.arg
    for attr in Run.__mapper__.column_attrs
    if attr.columns[0].default is not None and attr.columns[0].default.is_scalar
}


async def insert_new_run(
    connection: AsyncConnection,
    values: dict[str, Any],
    checkpoint: CheckpointRow,
    data: Any,
    events: Sequence[NewEvent],
    *,
    notify_work: bool,
    unless_newer: tuple[str, int] | None = None,
) -> bool:
    """A new run's row (``values`` by attribute name), its first checkpoint (a snapshot,
    ``data``) and its first ``events`` (at least one; numbered from 1, stamped with the
    run's creation, stored as one row)
    as one statement, committing by itself when ``connection`` has no transaction begun;
    with ``notify_work``, the runners of every process hear of it (``stepwise_work``).
    A taken idempotency key fails it whole (IntegrityError). With ``unless_newer`` (a
    workflow's name and the version believed its latest) nothing is written, and False
    returned, when a newer version of that workflow is stored."""
    values = {**_NEW_RUN_DEFAULTS, **values}
    args: list[Any] = [
        encode_json(value).decode() if key in _JSON_KEYS else value for key, value in values.items()
    ]
    args += [
        checkpoint.id,
        checkpoint.parent_id,
        checkpoint.seq,
        checkpoint.last_node,
        checkpoint.next_node,
        checkpoint.status,
        checkpoint.steps_completed,
        encode_json(data).decode(),
        checkpoint.created_at,
        len(events),
        events[0].type if len(events) == 1 else BATCH,
        events[0].node if len(events) == 1 else None,
        stored_json(events, -1, None)[0],
    ]
    if unless_newer is not None:
        args += unless_newer
    sql = _new_run_sql(tuple(values), notify_work, unless_newer is not None)
    if await driver_fetchrow(connection, sql, args) is None:
        return False
    metrics.observe_events(event.type for event in events)
    return True


@functools.lru_cache(maxsize=16)
def _new_run_sql(keys: tuple[str, ...], notify_work: bool, unless_newer: bool) -> str:
    """``insert_new_run``'s statement: $1… the run's values in ``keys`` order, then the
    checkpoint's columns, then the events' count and their row's type, node and data,
    then (``unless_newer``) the workflow's name and the version that must be its latest."""
    a = len(keys) + 1  # the checkpoint's first parameter
    cid, parent, seq, last, nxt, status, steps, data, created = (f"${a + i}" for i in range(9))
    count, type_, node, payload, name, version = (f"${a + 9 + i}" for i in range(6))
    notify = ", pg_notify('stepwise_work', r.id)" if notify_work else ""
    # INSERT … SELECT: Postgres infers the parameters' types from the columns, as for VALUES
    guard = (
        f" WHERE NOT EXISTS (SELECT 1 FROM workflows WHERE name = {name} AND version > {version})"
        if unless_newer
        else ""
    )
    return (
        f"WITH r AS (INSERT INTO runs ({', '.join(_COLUMN_NAMES[key] for key in keys)})"
        f" SELECT {', '.join(f'${i}' for i in range(1, a))}{guard} RETURNING id, created_at), "
        "c AS (INSERT INTO checkpoints (id, run_id, parent_id, seq, last_node, next_node,"
        " status, steps_completed, base_id, data, created_at)"
        f" SELECT {cid}::text, r.id, {parent}::text, {seq}::int, {last}::text, {nxt}::text,"
        f" {status}::text, {steps}::int, NULL, {data}::json, {created}::timestamptz FROM r), "
        "e AS (INSERT INTO events (run_id, seq, type, node, ts, data)"
        f" SELECT r.id, {count}::int, {type_}::text, {node}::text, r.created_at,"
        f" {payload}::json FROM r) "
        f"SELECT r.id{notify} FROM r"
    )

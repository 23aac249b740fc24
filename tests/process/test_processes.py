"""Many Stepwise processes on one Postgres: claims, leases, fencing, recovery, shutdown.

Every test runs real ``python -m app serve|worker`` processes against a scratch database
and checks the outcome in the database itself: each step visit recorded exactly once
(``node.completed`` events and checkpoints), one terminal event per run.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import (
    CallServer,
    Procs,
    event_count,
    lease_owner,
    rows,
    scalar,
    step_visits,
    wait_until,
)

pytestmark = [pytest.mark.slow]


def chain(name: str, nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ids = list(nodes)
    return {
        "name": name,
        "nodes": nodes,
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


TEN_STEPS = chain("ten", {f"n{i}": {"step": "set", "set": {f"k{i}": i}} for i in range(10)})


def slow_flow(server: CallServer) -> dict[str, Any]:
    """before (a fast call) → slow (blocks until released) → after."""
    return chain(
        "slow",
        {
            "before": {"step": "call", "with": {"url": server.url("/fast"), "timeout_s": 60}},
            "slow": {"step": "call", "with": {"url": server.url("/slow"), "timeout_s": 60}},
            "after": {"step": "set", "set": {"done": True}},
        },
    )


async def store(client: httpx.AsyncClient, definition: dict[str, Any]) -> None:
    response = await client.post("/workflows", json=definition)
    assert response.status_code in (200, 201), response.text


async def start(client: httpx.AsyncClient, workflow: str, **inputs: Any) -> str:
    response = await client.post("/runs", json={"workflow": workflow, "inputs": inputs})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def status_of(db: AsyncEngine, run_id: str) -> str:
    return str(await scalar(db, "SELECT status FROM runs WHERE id = :id", id=run_id))


async def wait_status(db: AsyncEngine, run_id: str, status: str, timeout_s: float = 60) -> None:
    async def reached() -> bool:
        return await status_of(db, run_id) == status

    await wait_until(reached, timeout_s, f"run {run_id} to be {status}")


async def assert_exactly_once(
    db: AsyncEngine, run_ids: list[str], nodes: list[str], pauses: int = 0
) -> None:
    """Every run completed once, every node's visit recorded once, one checkpoint each
    (and one more per pause)."""
    completed = await rows(
        db,
        "SELECT id, status, checkpoint_seq FROM runs WHERE id = ANY(:ids)",
        ids=run_ids,
    )
    assert len(completed) == len(run_ids)
    assert {status for _, status, _ in completed} == {"completed"}
    # node.completed per (run, node): exactly one for every node of every run
    visits = await rows(
        db,
        "SELECT run_id, node, count(*) FROM event_log WHERE type = 'node.completed' "
        "AND run_id = ANY(:ids) GROUP BY run_id, node",
        ids=run_ids,
    )
    assert len(visits) == len(run_ids) * len(nodes)
    assert {n for _, _, n in visits} == {1}
    # checkpoints: the start one and one per step, with gapless seqs and no duplicates
    checkpoints = await rows(
        db,
        "SELECT run_id, count(*), count(DISTINCT seq), max(seq), "
        "count(DISTINCT last_node) FROM checkpoints WHERE run_id = ANY(:ids) GROUP BY run_id",
        ids=run_ids,
    )
    expected = len(nodes) + 1 + pauses
    assert {tuple(c[1:]) for c in checkpoints} == {(expected, expected, expected, len(nodes))}
    assert {seq for _, _, seq in completed} == {expected}
    terminal = await rows(
        db,
        "SELECT run_id, count(*) FROM event_log WHERE run_id = ANY(:ids) "
        "AND type IN ('run.completed', 'run.failed', 'run.cancelled') GROUP BY run_id",
        ids=run_ids,
    )
    assert len(terminal) == len(run_ids)
    assert {n for _, n in terminal} == {1}


# -- many processes, one database --------------------------------------------------------------


async def test_three_processes_share_the_load_exactly_once(procs: Procs, db: AsyncEngine) -> None:
    serve = procs.spawn("serve")
    workers = [procs.spawn("worker"), procs.spawn("worker")]
    for proc in (serve, *workers):
        await proc.ready()
    async with httpx.AsyncClient(base_url=serve.url, timeout=60) as client:
        await store(client, TEN_STEPS)
        limit = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with limit:
                return await start(client, "ten", i=i)

        run_ids = await asyncio.gather(*(one(i) for i in range(300)))

        async def all_done() -> bool:
            n = await scalar(
                db,
                "SELECT count(*) FROM runs WHERE status IN ('completed', 'failed')",
            )
            return int(n) == len(run_ids)

        await wait_until(all_done, 120, "300 runs to finish")
    await assert_exactly_once(db, run_ids, [f"n{i}" for i in range(10)])
    # every process took part (NOTIFY woke them all, SKIP LOCKED shared the work)
    for proc in (serve, *workers):
        assert proc.popen.poll() is None, proc.log()


# -- a worker dies in the middle of a step -----------------------------------------------------


async def test_sigkill_mid_step_resumes_elsewhere_from_the_last_checkpoint(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    first, second = procs.spawn("worker"), procs.spawn("worker")
    await first.ready()
    await second.ready()
    await store(api, slow_flow(call_server))
    run_id = await start(api, "slow")
    [hit] = await call_server.wait_hits("/slow", 1)
    holder = procs.by_owner(await lease_owner(db, run_id))
    other = second if holder is first else first

    holder.signal(signal.SIGKILL)
    await holder.wait_exit()
    # the lease lapses; the other worker claims the run and runs the slow step again
    hits = await call_server.wait_hits("/slow", 2)
    assert procs.by_owner(await lease_owner(db, run_id)) is other
    call_server.release()
    await wait_status(db, run_id, "completed")

    assert len(hits) == 2
    assert hits[0].key == hits[1].key == f"{run_id}:slow:1" == hit.key
    assert len(call_server.hits_of("/fast")) == 1  # the checkpointed step never ran again
    assert await step_visits(db, run_id) == {"before": 1, "slow": 1, "after": 1}
    assert await event_count(db, run_id, "run.completed") == 1
    await assert_exactly_once(db, [run_id], ["before", "slow", "after"])


async def test_sigkill_during_group_committed_pure_steps_loses_and_repeats_nothing(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient
) -> None:
    """Pure steps share commits (group commit); a worker killed between them leaves only
    whole steps behind, and the run finishes elsewhere with every visit recorded once."""
    loops = 4000
    first, second = procs.spawn("worker"), procs.spawn("worker")
    await first.ready()
    await second.ready()
    await store(
        api,
        {
            "name": "pure-loop",
            "state": {"n": 0},
            "max_node_iterations": loops,
            "nodes": {
                "tick": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
                "done": {"step": "set"},
            },
            "edges": [
                {"from": "tick", "to": "tick", "when": f"state.n < {loops}", "loop": True},
                {"from": "tick", "to": "done"},
            ],
        },
    )
    run_id = await start(api, "pure-loop")

    async def under_way() -> bool:
        count = await scalar(db, "SELECT step_count FROM runs WHERE id = :id", id=run_id)
        return bool(count and count > 100)

    await wait_until(under_way, 60, "the loop to be under way")
    holder = procs.by_owner(await lease_owner(db, run_id))
    holder.signal(signal.SIGKILL)
    await holder.wait_exit()
    killed_at = await scalar(db, "SELECT step_count FROM runs WHERE id = :id", id=run_id)
    assert killed_at < loops  # killed mid-loop, not after it
    await wait_status(db, run_id, "completed", timeout_s=120)

    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["output"] == {"n": loops}
    assert run["step_count"] == loops + 1
    assert await step_visits(db, run_id) == {"tick": loops, "done": 1}  # each visit once
    seqs = await rows(
        db,
        "SELECT count(*), count(DISTINCT seq), max(seq), count(DISTINCT steps_completed) "
        "FROM checkpoints WHERE run_id = :id",
        id=run_id,
    )
    assert tuple(seqs[0]) == (loops + 2,) * 4  # the start, then one per step
    events = await rows(
        db, "SELECT count(*), max(seq) FROM event_log WHERE run_id = :id", id=run_id
    )
    assert events[0][0] == events[0][1]  # gapless
    assert await event_count(db, run_id, "run.completed") == 1


# -- a frozen lease holder wakes up after another worker finished its run ----------------------


async def test_frozen_holder_is_fenced_off_after_its_lease_lapsed(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    first, second = procs.spawn("worker"), procs.spawn("worker")
    await first.ready()
    await second.ready()
    await store(api, slow_flow(call_server))
    run_id = await start(api, "slow")
    await call_server.wait_hits("/slow", 1)
    holder = procs.by_owner(await lease_owner(db, run_id))
    other = second if holder is first else first

    holder.signal(signal.SIGSTOP)
    try:
        await call_server.wait_hits("/slow", 2)  # lease (2 s) lapsed: the other took over
        assert procs.by_owner(await lease_owner(db, run_id)) is other
        call_server.release()  # both calls answer: the frozen one's answer waits for it
        await wait_status(db, run_id, "completed")
        checkpoints = await scalar(
            db, "SELECT count(*) FROM checkpoints WHERE run_id = :id", id=run_id
        )
    finally:
        holder.signal(signal.SIGCONT)
    # the late writer finds its lease gone: its step's outcome is refused, nothing changes
    await holder.wait_log("lease lost")
    await asyncio.sleep(0.5)
    assert await status_of(db, run_id) == "completed"
    assert await step_visits(db, run_id) == {"before": 1, "slow": 1, "after": 1}
    assert await event_count(db, run_id, "run.completed") == 1
    assert (
        await scalar(db, "SELECT count(*) FROM checkpoints WHERE run_id = :id", id=run_id)
        == checkpoints
    )
    hits = call_server.hits_of("/slow")
    assert len(hits) == 2 and hits[0].key == hits[1].key
    assert holder.popen.poll() is None  # it carries on serving other runs


async def test_a_started_serve_process_keeps_its_startup_heap_out_of_the_collector(
    procs: Procs,
) -> None:
    """Once up, ``serve`` freezes the objects it started with (``cli.settle_heap``), so
    the collector's full passes stop walking them under load."""
    serve = await procs.start("serve")
    async with httpx.AsyncClient(base_url=serve.url) as client:
        text = (await client.get("/metrics")).text
    frozen = [line for line in text.splitlines() if line.startswith("stepwise_heap_frozen_")]
    assert frozen, "no stepwise_heap_frozen_objects in /metrics"
    assert float(frozen[0].split()[1]) > 10_000  # the modules, the app, its models


async def test_a_started_worker_process_keeps_its_startup_heap_out_of_the_collector(
    procs: Procs,
) -> None:
    worker = await procs.start("worker")
    await worker.wait_log("worker ready")
    found = re.search(r"worker ready \((\d+) startup objects", worker.log())
    assert found, worker.log()
    assert int(found.group(1)) > 10_000


# -- graceful shutdown -------------------------------------------------------------------------


async def test_sigterm_lets_the_step_in_flight_finish_and_gives_the_run_back(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    worker = await procs.start("worker", shutdown_grace_s="30")
    await store(api, slow_flow(call_server))
    await store(api, TEN_STEPS)
    run_id = await start(api, "slow")
    await call_server.wait_hits("/slow", 1)

    worker.signal(signal.SIGTERM)
    await worker.wait_log("stopping: finishing runs in flight")
    late = await start(api, "ten")  # made while it drains: it must not take it
    call_server.release()
    assert await worker.wait_exit() == 0
    # the step in flight finished and was checkpointed; the run stopped at that boundary
    assert await step_visits(db, run_id) == {"before": 1, "slow": 1}
    assert await status_of(db, run_id) == "queued"
    assert await lease_owner(db, run_id) is None
    assert len(call_server.hits_of("/slow")) == 1
    assert await status_of(db, late) == "queued"
    assert await lease_owner(db, late) is None

    await procs.start("worker")  # the next process takes what was left
    await wait_status(db, late, "completed")
    await wait_status(db, run_id, "completed")
    assert len(call_server.hits_of("/slow")) == 1  # the finished step never ran again
    await assert_exactly_once(db, [run_id], ["before", "slow", "after"])


async def test_sigterm_on_serve_gives_unfinished_runs_back_at_once(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    # A long lease: only the release on shutdown can explain a prompt takeover.
    serve = await procs.start("serve", lease_s="120", shutdown_grace_s="1")
    await store(api, slow_flow(call_server))
    run_id = await start(api, "slow")
    await call_server.wait_hits("/slow", 1)
    worker = await procs.start("worker", lease_s="120")

    serve.signal(signal.SIGTERM)
    await serve.wait_exit()
    assert "released 1 run(s)" in serve.log()
    await call_server.wait_hits("/slow", 2)  # the worker took it, well within the lease
    assert procs.by_owner(await lease_owner(db, run_id)) is worker
    call_server.release()
    await wait_status(db, run_id, "completed")
    hits = call_server.hits_of("/slow")
    assert hits[0].key == hits[1].key
    await assert_exactly_once(db, [run_id], ["before", "slow", "after"])


# -- paused runs live in the database only -----------------------------------------------------


async def test_an_interrupt_is_answered_on_another_process(procs: Procs, db: AsyncEngine) -> None:
    first = await procs.start("serve")
    flow = chain(
        "ask",
        {
            "ask": {
                "step": "interrupt",
                "with": {"question": "ok?"},
                "set": {"ok": "{{ output }}"},
            },
            "after": {"step": "set", "set": {"done": True}},
        },
    )
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        await store(client, flow)
        run = (
            await client.post(
                "/runs/wait", json={"workflow": "ask", "inputs": {}}, params={"timeout_s": 20}
            )
        ).json()
    assert run["status"] == "interrupted", run
    first.signal(signal.SIGTERM)
    await first.wait_exit()

    second = await procs.start("serve")
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        answer = {"interrupt_id": run["interrupt"]["id"], "value": "yes"}
        response = await client.post(f"/runs/{run['id']}/response", json=answer)
        assert response.status_code == 202, response.text
        done = (await client.get(f"/runs/{run['id']}/wait", params={"timeout_s": 20})).json()
    assert done["status"] == "completed", done
    assert done["state"] == {"ok": "yes", "done": True}
    assert await step_visits(db, run["id"]) == {"ask": 1, "after": 1}


async def test_a_timer_survives_a_killed_serve_process(procs: Procs, db: AsyncEngine) -> None:
    first = await procs.start("serve")
    flow = chain(
        "nap",
        {
            "before": {"step": "set", "set": {"before": True}},
            "nap": {"step": "wait", "with": {"seconds": 2}},
            "after": {"step": "set", "set": {"after": True}},
        },
    )
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        await store(client, flow)
        run = (
            await client.post(
                "/runs/wait", json={"workflow": "nap", "inputs": {}}, params={"timeout_s": 20}
            )
        ).json()
    assert run["status"] == "suspended", run
    first.signal(signal.SIGKILL)
    await first.wait_exit()

    await procs.start("serve")  # nobody asks it anything: it resumes the run by itself
    await wait_status(db, run["id"], "completed", timeout_s=30)
    assert await step_visits(db, run["id"]) == {"before": 1, "nap": 1, "after": 1}
    assert await event_count(db, run["id"], "run.resumed") == 1


# -- the database goes away --------------------------------------------------------------------


async def listeners_since(db: AsyncEngine, since: Any, count: int) -> bool:
    """At least ``count`` LISTEN connections (LISTENing, or pinging) made after ``since``."""
    n = await scalar(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_start > :t AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')",
        t=since,
    )
    return int(n) >= count


def restart_postgres() -> datetime:
    before = datetime.now(UTC)
    version = subprocess.run(
        ["ls", "/etc/postgresql"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return before


async def test_postgres_restart_under_load_loses_and_duplicates_nothing(
    procs: Procs, db: AsyncEngine, call_server: CallServer
) -> None:
    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("needs pg_ctlcluster to restart the local Postgres")
    nodes = {f"s{i}": {"step": "set", "set": {f"k{i}": i}} for i in range(4)}
    nodes["remote"] = {
        "step": "call",
        "with": {"url": call_server.url("/fast?delay=0.1"), "timeout_s": 30},
    }
    nodes["pause"] = {"step": "wait", "with": {"seconds": 0.5}}
    nodes["end"] = {"step": "set", "set": {"done": True}}
    flow = chain("bumpy", nodes)
    serve = procs.spawn("serve", db_pool_size="3")
    worker = procs.spawn("worker", db_pool_size="3")
    await serve.ready()
    await worker.ready()
    async with httpx.AsyncClient(base_url=serve.url, timeout=60) as client:
        await store(client, flow)
        run_ids = [await start(client, "bumpy") for _ in range(100)]

        async def some_done() -> bool:
            return int(await scalar(db, "SELECT count(*) FROM runs WHERE status='completed'")) > 5

        await wait_until(some_done, 60, "the first runs to finish")
        # connections in use stay bounded: pool (3 + 3 overflow) + listener, per process
        used = await scalar(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'stepwise'",
        )
        assert int(used) <= 2 * 7, used
        await db.dispose()
        restarted_at = await asyncio.to_thread(restart_postgres)

        async def all_done() -> bool:
            try:
                n = await scalar(db, "SELECT count(*) FROM runs WHERE status = 'completed'")
            except Exception:
                return False  # Postgres still starting
            return int(n) == len(run_ids)

        await wait_until(all_done, 120, "every run to finish after the restart")
        # the API process serves again, the processes survived
        assert (await client.get("/readyz")).status_code == 200
    # both processes LISTEN again, on connections made after the restart
    await wait_until(lambda: listeners_since(db, restarted_at, 2), 30, "the listeners")
    assert serve.popen.poll() is None and worker.popen.poll() is None
    await assert_exactly_once(db, run_ids, list(nodes), pauses=1)


async def test_killed_connections_are_replaced(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient
) -> None:
    # Polls and sweeps far apart: only NOTIFY, through a listener that came back, can
    # wake the worker for the runs started after the connections were killed.
    worker = await procs.start("worker", poll_interval_s="60", sweep_interval_s="60")
    await store(api, TEN_STEPS)
    first = [await start(api, "ten") for _ in range(20)]
    killed_at = await scalar(db, "SELECT now()")
    await scalar(
        db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    await worker.wait_log("event listener connection lost")

    # the worker's listener and the API's are back, on new connections
    await wait_until(lambda: listeners_since(db, killed_at, 2), 30, "the listeners")
    more = [await start(api, "ten") for _ in range(20)]

    async def all_done() -> bool:
        n = await scalar(db, "SELECT count(*) FROM runs WHERE status = 'completed'")
        return int(n) == 40

    await wait_until(all_done, 30, "every run to finish")
    await assert_exactly_once(db, first + more, [f"n{i}" for i in range(10)])

"""``stepwise serve --processes N``: N API+runner processes on one port (Postgres only)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import ROOT, CallServer, Procs, lease_owner, scalar, wait_until
from tests.process.test_processes import start, store

pytestmark = [pytest.mark.slow]

RUNS = 24


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "(Z)" not in Path(f"/proc/{pid}/stat").read_text()


async def post_run(base: str, workflow: str) -> str:
    # a connection of its own per run, so the kernel may hand each to either process
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await start(client, workflow)


async def test_runs_spread_over_the_processes_and_sigterm_stops_them_all(
    procs: Procs, db: AsyncEngine, call_server: CallServer
) -> None:
    server = await procs.start("serve", processes="2")
    flow = {
        "name": "held",
        "nodes": {"hold": {"step": "call", "with": {"url": call_server.url("/slow")}}},
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await store(client, flow)
    run_ids = await asyncio.gather(*(post_run(server.url, "held") for _ in range(RUNS)))
    await call_server.wait_hits("/slow", RUNS)  # every run is in a runner, held by its call

    owners = [await lease_owner(db, run_id) for run_id in run_ids]
    pids = {int(str(owner).split(":")[1]) for owner in owners}
    assert len(pids) == 2, owners  # both processes' runner pools hold runs
    assert all(parent_of(pid) == server.pid for pid in pids)

    call_server.release()

    async def all_completed() -> bool:
        done = await scalar(db, "SELECT count(*) FROM runs WHERE status = 'completed'")
        return int(done) == RUNS

    await wait_until(all_completed, 60, "every run to complete")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200

    server.signal(signal.SIGTERM)
    assert await server.wait_exit(30) == 0
    assert not any(alive(pid) for pid in pids)


async def test_the_processes_die_with_a_killed_parent(procs: Procs) -> None:
    server = await procs.start("serve", processes="2")
    children = [
        int(pid)
        for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    ]
    assert len(children) == 2
    server.signal(signal.SIGKILL)
    await server.wait_exit(30)

    async def gone() -> bool:
        return not any(alive(pid) for pid in children)

    await wait_until(gone, 30, "the orphaned serve processes to stop")


async def test_a_child_killed_soon_after_it_came_up_is_started_again(procs: Procs) -> None:
    """A child that served (it said so on its pipe) and dies is replaced, however soon
    after its start; only one that dies before it could serve stops the others."""
    server = await procs.start("serve", processes="2")

    async def both_up() -> bool:  # as the supervisor sees it: each said so on its pipe
        return len(re.findall(r"serve process \d+ is up", server.log())) >= 2

    await wait_until(both_up, 30, "both children up")
    children_file = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    first = [int(pid) for pid in children_file.read_text().split()]
    os.kill(first[0], signal.SIGKILL)

    async def replaced() -> bool:
        now = [int(pid) for pid in children_file.read_text().split()]
        return len(now) == 2 and first[0] not in now and first[1] in now

    await wait_until(replaced, 30, "the killed child replaced")
    assert server.popen.poll() is None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200
    assert "failed to start" not in server.log()
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(30) == 0


def test_sqlite_refuses_several_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STEPWISE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'one.db'}",
        "STEPWISE_PROCESSES": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "needs PostgreSQL" in done.stderr
    assert not (tmp_path / "one.db").exists()  # refused before anything started

"""Poison runs end instead of looping: a run whose execution raises inside the service
fails with ``internal_error`` after 3 attempts, and one whose worker dies at the same
checkpoint again and again fails with ``recovery_limit_exceeded``; both can be resumed
once the cause is gone. Real worker processes, real plugins found through entry points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import Procs, event_count, rows, scalar, wait_until
from tests.process.poison_steps import install
from tests.process.test_processes import start, status_of, store, wait_status

pytestmark = [pytest.mark.slow]


@pytest.fixture
def poison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugins installed (for the worker processes and this one's API), poisoned
    until the flag is deleted. Ask for it before ``api``."""
    site = tmp_path / "site"
    install(site)
    monkeypatch.syspath_prepend(str(site))  # for this process's API too
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    flag = tmp_path / "poisoned"
    flag.touch()
    monkeypatch.setenv("STEPWISE_TEST_POISON", str(flag))
    return flag


def flow(name: str, step: str) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": {
            "before": {"step": "set", "set": {"before": True}},
            "broken": {"step": step},
            "after": {"step": "set", "set": {"after": True}},
        },
        "edges": [{"from": "before", "to": "broken"}, {"from": "broken", "to": "after"}],
    }


async def run_row(db: AsyncEngine, run_id: str) -> dict[str, Any]:
    [row] = await rows(
        db,
        "SELECT status, error, lease_owner, recoveries, error_attempts FROM runs WHERE id = :id",
        id=run_id,
    )
    return dict(row._mapping)


async def test_a_run_raising_inside_the_service_fails_after_three_attempts(
    poison: Path, procs: Procs, db: AsyncEngine, api: httpx.AsyncClient
) -> None:
    worker = await procs.start("worker")
    await store(api, flow("raises", "raises_outside"))
    run_id = await start(api, "raises")
    await wait_status(db, run_id, "failed", timeout_s=60)

    run = await run_row(db, run_id)
    assert run["error"]["code"] == "internal_error"
    assert "RuntimeError" in run["error"]["message"]
    assert "Traceback" not in run["error"]["message"]
    assert run["error"]["node"] == "broken"
    assert run["lease_owner"] is None
    assert await event_count(db, run_id, "run.failed") == 1
    log = worker.log()
    assert log.count("execution raised inside the service") == 3  # three attempts, logged
    assert "Traceback" in log and "the plugin is broken" in log  # with the stack
    assert worker.popen.poll() is None  # the process itself is fine

    # fixed: a resume finishes the run from its last checkpoint
    poison.unlink()
    resumed = await api.post(f"/runs/{run_id}/resume", json={})
    assert resumed.status_code == 202, resumed.text
    await wait_status(db, run_id, "completed")
    visits = await rows(
        db,
        "SELECT node, count(*) FROM event_log WHERE run_id = :id AND type = 'node.completed' "
        "GROUP BY node",
        id=run_id,
    )
    assert dict(visits) == {"before": 1, "broken": 1, "after": 1}


async def test_a_run_that_kills_its_worker_every_time_fails_after_max_recoveries(
    poison: Path, procs: Procs, db: AsyncEngine, api: httpx.AsyncClient
) -> None:
    await store(api, flow("kills", "kills_process"))
    run_id = await start(api, "kills")
    deaths = 0
    worker = await procs.start("worker", max_recoveries="3")

    async def settled() -> bool:
        nonlocal worker, deaths
        if worker.popen.poll() is not None:
            assert worker.popen.returncode == 17, worker.log()
            deaths += 1
            worker = await procs.start("worker", max_recoveries="3")
        return await status_of(db, run_id) == "failed"

    await wait_until(settled, 90, "the run to fail")
    run = await run_row(db, run_id)
    assert run["error"]["code"] == "recovery_limit_exceeded"
    assert run["error"]["node"] == "broken"
    assert "3 times" in run["error"]["message"]
    assert deaths == 3  # the first execution and two recoveries died; the third gave up
    assert worker.popen.poll() is None
    assert run["lease_owner"] is None and run["recoveries"] == 0
    assert await event_count(db, run_id, "run.failed") == 1
    assert (
        await scalar(
            db,
            "SELECT count(*) FROM event_log WHERE run_id = :id AND type = 'node.completed' "
            "AND node = 'before'",
            id=run_id,
        )
        == 1
    )  # the step before it ran once: recoveries start from the last checkpoint

    poison.unlink()
    resumed = await api.post(f"/runs/{run_id}/resume", json={})
    assert resumed.status_code == 202, resumed.text
    await wait_status(db, run_id, "completed")

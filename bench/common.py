"""Shared pieces of the benchmark suite: scratch databases, timing, statistics, output.

Every suite (Stepwise over HTTP, LangGraph, DBOS) runs in its own process, takes its
parameters as JSON on the command line and prints one JSON document of figures on its
last line of stdout; ``bench.run_all`` gathers them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

PG_ADMIN_URL = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SCRATCH_PREFIX = "bench_"


def db_url(name: str) -> str:
    """The URL of database ``name`` on the benchmark server."""
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def scratch_db(name: str) -> str:
    """(Re)create an empty scratch database and return its URL."""
    assert name.startswith(SCRATCH_PREFIX), name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return db_url(name)


def drop_db(name: str) -> None:
    assert name.startswith(SCRATCH_PREFIX), name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return list(cursor.fetchall()) if cursor.description is not None else []


def database_bytes(url: str) -> int:
    """Bytes of every relation (tables, indexes, TOAST) in the database's user schemas."""
    rows = query(
        url,
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%'",
    )
    return int(rows[0][0])


def xact_commits(url: str) -> int:
    """Committed transactions in this database so far (pg_stat_database; flushed lazily)."""
    name = url.rsplit("/", 1)[1]
    rows = query(
        PG_ADMIN_URL, "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
    )
    return int(rows[0][0]) if rows else 0


def pct(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values``, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p95_ms": pct(ms, 95),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


@dataclass
class Throughput:
    in_flight: int
    runs: int
    steps: int
    seconds: float
    errors: int

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runs_per_s": self.runs_per_s, "steps_per_s": self.steps_per_s}


class Clock:
    """perf_counter for intervals inside one process; time.time for cross-process stamps."""

    now = staticmethod(time.perf_counter)
    wall = staticmethod(time.time)


def suite_args() -> dict[str, Any]:
    """Parse ``--params JSON`` given by run_all (or by hand)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="{}", help="suite parameters as JSON")
    return dict(json.loads(parser.parse_args().params))


def emit(result: dict[str, Any]) -> None:
    """Print the suite's figures as the last line of stdout."""
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def blob(size: int) -> str:
    """A string of ``size`` bytes that compresses poorly (like real payloads)."""
    return os.urandom(size // 2).hex()[:size]


DEFAULTS: dict[str, Any] = {
    "duration_s": 15.0,  # each throughput measurement
    "concurrency": [1, 16],  # runs in flight
    "reps": 2,  # every figure twice
    "latency_samples": 200,  # W3 samples per measurement
    "paused_runs": 10_000,  # W5
    "blob_bytes": 100_000,  # W5 checkpoint cost
    "state_steps": [20, 520],  # W5: two runs; the per-step cost is their difference
}
QUICK: dict[str, Any] = {
    **DEFAULTS,
    "duration_s": 5.0,
    "latency_samples": 60,
    "paused_runs": 1_000,
}


async def measure(
    out: dict[str, Any],
    workload: str,
    reps: int,
    make: Callable[..., Awaitable[Any]],
    concurrency: Sequence[int] | None = None,
) -> None:
    """Run ``make(c)`` (or ``make()``) ``reps`` times per concurrency into ``out[workload]``.

    A failed measurement is recorded under ``out["errors"]`` and the suite goes on.
    ``out["only"]`` (the ``only`` parameter: a list of workloads) skips the others.
    """
    out.setdefault(workload, [])
    if out.get("only") and workload not in out["only"]:
        return
    for rep in range(reps):
        for c in concurrency or [None]:
            label = f"{out['system']} {workload} rep {rep + 1}" + (f" c={c}" if c else "")
            try:
                result = await (make(c) if c is not None else make())
            except Exception as exc:
                log(f"{label} FAILED: {exc!r}")
                out.setdefault("errors", []).append(f"{label}: {exc!r}")
                continue
            if isinstance(result, Throughput):
                result = result.as_dict()
            out[workload].append({"rep": rep + 1, **result})
            for key in ("steps_per_s", "p50_ms", "db_growth_per_step", "db_bytes_per_run"):
                if result.get(key) is not None:
                    log(f"{label}: {key} {result[key]:,.1f}")
                    break

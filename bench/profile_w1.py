"""Profile Stepwise under W1 at 16 runs in flight, and count its database work per step.

    python -m bench.profile_w1 --params '{"duration_s": 15}'

Three measurements, each on its own server and scratch database:

1. py-spy samples the server process (``--format raw``: collapsed stacks) while the
   load runs; the top functions by own time and by inclusive time are printed.
2. ``pg_stat_database.xact_commit`` before and after the load (the statistics are
   flushed lazily, so it waits for the flush) gives transactions per step, every
   transaction counted: the runner's, the claim loop's and the API's.
3. ``log_statement = all`` on a second scratch database, a few runs at 1 in flight:
   the server log gives every statement (round trip) per step, by kind.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench.common import DEFAULTS, PG_ADMIN_URL, emit, log, query, suite_args, xact_commits
from bench.stepwise_suite import (
    Server,
    http_client,
    linear_workflow,
    start,
    store,
    w1_linear,
    wait,
)

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")
STATS_FLUSH_S = 11.0  # PG 15 flushes an idle backend's statistics after 10 s


def summarize_stacks(raw: str, top: int = 25) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * n / total) for name, n in counter.most_common(top)]

    app_inclusive = collections.Counter(
        {k: v for k, v in inclusive.items() if "/app/" in k or "(app/" in k}
    )
    return {
        "samples": total,
        "own": share(own),
        "inclusive": share(inclusive),
        "app_inclusive": share(app_inclusive),
    }


def start_py_spy(py_spy: str, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    command += ["--nonblocking", "--duration", str(seconds), "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def log_size() -> int | None:
    return PG_LOG.stat().st_size if PG_LOG.exists() else None


def read_log(offset: int) -> str:
    with PG_LOG.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def sessions(url: str) -> int:
    """Connections opened to this database so far (pg_stat_database.sessions, PG 14+)."""
    name = url.rsplit("/", 1)[1]
    rows = query(PG_ADMIN_URL, "SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,))
    return int(rows[0][0]) if rows else 0


async def profile_load(p: dict[str, Any]) -> dict[str, Any]:
    py_spy = shutil.which("py-spy")
    async with Server("bench_profile") as server, http_client(server.base, 16) as client:
        await store(client, linear_workflow())
        await w1_linear(client, 16, 3.0)
        await asyncio.sleep(STATS_FLUSH_S)
        xacts0, sessions0 = xact_commits(server.url), sessions(server.url)
        cpu0 = psutil.Process(server.pid).cpu_times()
        raw_path = Path("/tmp/bench_profile_w1.txt")
        spy = None
        if py_spy:
            spy = start_py_spy(py_spy, server.pid, int(p["duration_s"]), raw_path)
        result = await w1_linear(client, 16, p["duration_s"])
        cpu1 = psutil.Process(server.pid).cpu_times()
        if spy is not None:
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                log(f"py-spy failed: {err.decode()[-500:]}")
        await asyncio.sleep(STATS_FLUSH_S)
        xacts1, sessions1 = xact_commits(server.url), sessions(server.url)
        cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        out: dict[str, Any] = {
            "load": result.as_dict(),
            "xact_commits": xacts1 - xacts0,
            "xacts_per_step": (xacts1 - xacts0) / max(1, result.steps),
            "xacts_per_run": (xacts1 - xacts0) / max(1, result.runs),
            "new_connections": sessions1 - sessions0,
            "server_cpu_s": cpu_s,
            "server_cpu_ms_per_step": 1000 * cpu_s / max(1, result.steps),
            "server_cpu_share": cpu_s / result.seconds,
        }
        raw = read_text(raw_path) if py_spy else None
        if raw is not None:
            out["profile"] = summarize_stacks(raw)
            out["profile_raw"] = str(raw_path)
        else:
            out["profile"] = None
        return out


STATEMENT = re.compile(r"\[(\d+)\] \S+@(\S+) LOG:  (?:statement|execute [^:]*): (.*)")


def classify(sql: str) -> str:
    text = " ".join(sql.split())[:200]
    upper = text.upper()
    for word in ("BEGIN", "COMMIT", "ROLLBACK", "LISTEN", "UNLISTEN"):
        if upper.startswith(word):
            return word
    if "PG_NOTIFY" in upper:
        return "SELECT pg_notify"
    if upper.startswith("SELECT 1") or upper.startswith(";"):
        return "ping"
    match = re.match(r"(SELECT|INSERT INTO|UPDATE|DELETE FROM)\s.*?(?:FROM\s+)?(\w+)", text, re.I)
    if upper.startswith("SELECT"):
        table = re.search(r"\bFROM (\w+)", text, re.I)
        lock = " FOR UPDATE" if "FOR UPDATE" in upper else ""
        if table is None:
            return f"SELECT {text[7:40]}"
        return f"SELECT {table.group(1)}{lock}"
    if match:
        return f"{match.group(1).upper()} {match.group(2)}"
    return text[:40]


async def count_statements(runs: int) -> dict[str, Any]:
    if log_size() is None:
        return {"skipped": f"{PG_LOG} not readable"}
    server = Server("bench_statements")
    query(server.url, "ALTER DATABASE bench_statements SET log_statement = 'all'")
    async with server, http_client(server.base, 1) as client:
        await store(client, linear_workflow())
        await w1_linear(client, 1, 1.0)
        offset = log_size() or 0
        steps = 0
        for _ in range(runs):
            run = await wait(client, await start(client, "bench-linear"))
            steps += int(run["step_count"])
        await asyncio.sleep(0.5)
        text = read_log(offset)
    kinds: collections.Counter[str] = collections.Counter()
    entries: list[str] = []
    for line in text.splitlines():  # a statement's continuation lines start with a tab
        if line.startswith(("\t", " ")) and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    for line in entries:
        match = STATEMENT.search(line)
        if match and match.group(2) == "bench_statements":
            kinds[classify(match.group(3))] += 1
    total = sum(kinds.values())
    return {
        "runs": runs,
        "steps": steps,
        "statements": total,
        "statements_per_step": total / max(1, steps),
        "by_kind_per_run": {k: v / runs for k, v in kinds.most_common()},
        "note": "1 run in flight; includes the API's POST /runs and GET /wait statements",
    }


async def run_profile(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    out = await profile_load(p)
    out["statements"] = await count_statements(int(p.get("statement_runs", 20)))
    return out


def main() -> None:
    emit(asyncio.run(run_profile(suite_args())))


if __name__ == "__main__":
    main()

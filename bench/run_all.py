"""Run the whole benchmark suite and write ``bench/RESULTS.md``.

    python -m bench.run_all            # full: 15 s per throughput figure, 10,000 paused runs
    python -m bench.run_all --quick    # short: 5 s per figure, 1,000 paused runs

Each part runs in its own process (pgbench, Stepwise over HTTP, LangGraph, DBOS, the SSE
fan-out, the profile), each on its own scratch database; every figure is measured twice.
The raw figures go to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import DEFAULTS, PG_ADMIN_URL, QUICK, log, query

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = (
    "pgbench", "stepwise", "processes", "langgraph", "dbos", "agent", "parallel", "sse", "profile",
)  # fmt: skip
SUITES = {
    "pgbench": "bench.pgbench_limit",
    "stepwise": "bench.stepwise_suite",
    "processes": "bench.stepwise_suite",  # W1 and W1C with `serve --processes 2`
    "agent": "bench.agent_overhead",
    "parallel": "bench.parallel_suite",
    "langgraph": "bench.langgraph_suite",
    "dbos": "bench.dbos_suite",
    "profile": "bench.profile_w1",
}
PACKAGES = (
    "stepwise", "fastapi", "uvicorn", "sqlalchemy", "asyncpg", "httpx", "langgraph",
    "langgraph-checkpoint-postgres", "dbos", "psycopg", "py-spy",
)  # fmt: skip


def settle(max_wait_s: float = 90.0, idle_below: float = 10.0) -> dict[str, float]:
    """Wait for a quiet machine before a part: Postgres writes its dirty pages out
    (``CHECKPOINT``, so the previous part's writes are not flushed during this one), then
    the machine's CPU use, measured over one-second windows, must fall below
    ``idle_below`` percent twice in a row (at most ``max_wait_s``). The load average,
    which lags by a minute, cannot tell a busy machine from one that just stopped."""
    began = time.monotonic()
    query(PG_ADMIN_URL, "CHECKPOINT")
    quiet, busy = 0, 100.0
    while quiet < 2 and time.monotonic() - began < max_wait_s:
        busy = psutil.cpu_percent(interval=1.0)
        quiet = quiet + 1 if busy < idle_below else 0
    return {"waited_s": round(time.monotonic() - began, 1), "cpu_percent": busy}


def run_suite(module: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one suite in its own process; its figures are the last line of its stdout."""
    log(f"running {module}")
    done = subprocess.run(
        [sys.executable, "-m", module, "--params", json.dumps(params)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        return {"error": f"{module} exited {done.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_sse(quick: bool, *, subscribers: int = 1000, runs: int = 1) -> dict[str, Any]:
    """W4 through ``bench.sse_fanout``: ``subscribers`` spread over ``runs`` runs."""
    from bench import sse_fanout

    args = argparse.Namespace(
        subscribers=subscribers,
        runs=runs,
        connect_wave=500,
        rounds=10 if quick else 20,
        wait_s=0.1,
        workers=4,
        json=False,
    )
    log(f"running bench.sse_fanout ({subscribers:,} subscribers, {runs} runs)")
    try:
        return dict(asyncio.run(sse_fanout.bench(args)))
    except Exception as exc:
        return {"error": f"sse_fanout failed: {exc!r}"}


PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


def pg_log_size() -> int | None:
    return PG_LOG.stat().st_size if PG_LOG.exists() else None


def pg_restarts_since(offset: int | None) -> int | None:
    """Postgres shutdowns logged since ``offset`` (something else on the machine restarted it)."""
    if offset is None or not PG_LOG.exists():
        return None
    with PG_LOG.open("rb") as handle:
        handle.seek(offset)
        return handle.read().count(b"received fast shutdown request")


# -- machine and versions --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "-"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "postgres": query(PG_ADMIN_URL, "SELECT version()")[0][0],
        "commit": commit + (" (app/ has uncommitted changes)" if dirty else ""),
        "versions": versions,
    }


# -- the table ---------------------------------------------------------------------------------


def pick(result: dict[str, Any], workload: str, key: str, **match: Any) -> list[float]:
    """``key`` of every rep of ``workload`` whose fields equal ``match``."""
    rows = result.get(workload) or []
    found = []
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and row.get(key) is not None:
            found.append(float(row[key]))
    return found


def nested(result: dict[str, Any], workload: str, path: tuple[str, str]) -> list[float]:
    return [
        float(row[path[0]][path[1]])
        for row in result.get(workload) or []
        if row.get(path[0]) and row[path[0]].get(path[1]) is not None
    ]


def fmt(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return " / ".join(f"{v:,.{digits}f}" for v in values)


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio(a: list[float], b: list[float]) -> str:
    ma, mb = mean(a), mean(b)
    if ma is None or mb is None or mb == 0:
        return "-"
    return f"{ma / mb:.2f}"


# -- comparison with an earlier run -------------------------------------------------------------

BASELINE = HERE / "results_baseline.json"


def key_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The Stepwise figures compared across runs (means of the reps; None when missing)."""
    sw, prof = data.get("stepwise") or {}, data.get("profile") or {}
    st = prof.get("statements") or {}
    kinds = st.get("by_kind_per_run") or {}
    steps_per_run = (st.get("steps") or 0) / max(1, st.get("runs") or 1) or None
    out: dict[str, Any] = {
        "date": data["machine"]["date"],
        "commit": data["machine"]["commit"],
        "W1 @1 durable steps/s": pick(sw, "W1", "steps_per_s", in_flight=1),
        "W1 @16 durable steps/s": pick(sw, "W1", "steps_per_s", in_flight=16),
        "W1C @1 call steps/s": pick(sw, "W1C", "steps_per_s", in_flight=1),
        "W1C @16 call steps/s": pick(sw, "W1C", "steps_per_s", in_flight=16),
        "W2 @1 p50 ms": pick(sw, "W2", "p50_ms", in_flight=1),
        "W2 @1 p95 ms": pick(sw, "W2", "p95_ms", in_flight=1),
        "W2 @16 p50 ms": pick(sw, "W2", "p50_ms", in_flight=16),
        "W2 @16 p95 ms": pick(sw, "W2", "p95_ms", in_flight=16),
        "W3 p50 ms": pick(sw, "W3", "p50_ms"),
        "W3 p95 ms": pick(sw, "W3", "p95_ms"),
        "profile @16: durable steps/s": (prof.get("load") or {}).get("steps_per_s"),
        "profile @16: server CPU ms per step": prof.get("server_cpu_ms_per_step"),
        "profile @16: committed transactions per step (pg_stat_database)": prof.get(
            "xacts_per_step"
        ),
        "profile @16: new database connections": prof.get("new_connections"),
        "@1: statements per step (log_statement)": st.get("statements_per_step"),
        "@1: transactions per step (BEGIN per step, log_statement)": (
            kinds.get("BEGIN", 0) / steps_per_run if steps_per_run and kinds else None
        ),
        "by_kind_per_run": kinds,
    }
    # controls: the same machine's noise moves these too (they did not change between runs)
    lg, pg = data.get("langgraph") or {}, data.get("pgbench") or {}
    out["control: LangGraph W1 @16 durable steps/s"] = pick(lg, "W1", "steps_per_s", in_flight=16)
    out["control: DBOS W1 @16 durable steps/s"] = pick(
        data.get("dbos") or {}, "W1", "steps_per_s", in_flight=16
    )
    out["control: pgbench -c 16 TPS"] = [
        float(r["tps"]) for r in pg.get("runs", []) if r["clients"] == 16
    ]
    return out


LOWER_IS_BETTER = (" ms", "per step", "connections")


def write_comparison(add: Any, before: dict[str, Any], now: dict[str, Any], text: str) -> None:
    add("## What each optimisation bought\n")
    add(f"Stepwise figures of the earlier run ({before['date']}, commit {before['commit']}) "
        f"against this one ({now['date']}, commit {now['commit']}); means of the two reps. "
        "Same machine, same command.\n")  # fmt: skip
    add("| figure | before | now | change |")
    add("|---|---|---|---|")

    def cell(value: Any) -> tuple[float | None, str]:
        """A mean and its text; reps (a list) are shown as ``mean (rep 1 / rep 2)``."""
        if isinstance(value, list):
            return mean(value), f"{mean(value):,.1f} ({fmt(value, 1)})" if value else "-"
        return value, "-" if value is None else f"{value:,.1f}"

    for key, before_value in before.items():
        if key in ("date", "commit", "by_kind_per_run"):
            continue
        (old, old_text), (new, new_text) = cell(before_value), cell(now.get(key))
        change = "-"
        if old and new:
            lower = any(word in key for word in LOWER_IS_BETTER)
            better = old / new if lower else new / old
            change = (
                "about the same"
                if abs(better - 1) < 0.05
                else f"{better:.2f}x {'better' if better > 1 else 'worse'}"
            )
        add(f"| {key} | {old_text} | {new_text} | {change} |")
    add("")
    kinds_before, kinds_now = before.get("by_kind_per_run") or {}, now.get("by_kind_per_run") or {}
    if kinds_before or kinds_now:
        add("Statements per 10-step run at 1 in flight, by kind (`log_statement = all`; an "
            "asyncpg executemany is one pipelined round trip but logs one `execute` per row):\n")  # fmt: skip
        add("| statement | before | now |")
        add("|---|---|---|")
        for kind in dict.fromkeys([*kinds_before, *kinds_now]):
            old, new = kinds_before.get(kind), kinds_now.get(kind)
            add(f"| `{kind}` | {'-' if old is None else f'{old:.1f}'} | "
                f"{'-' if new is None else f'{new:.1f}'} |")  # fmt: skip
        add("")
    if text:
        add(text.rstrip() + "\n")


def write_results(data: dict[str, Any], path: Path) -> None:
    m = data["machine"]
    sw, lg, db = data.get("stepwise", {}), data.get("langgraph", {}), data.get("dbos", {})
    pg, sse, prof = data.get("pgbench", {}), data.get("sse", {}), data.get("profile", {})
    p = data["params"]
    lines: list[str] = []
    add = lines.append
    add("# Stepwise benchmark results\n")
    base = QUICK if data["quick"] else DEFAULTS
    flags = " --quick" if data["quick"] else ""
    if p["duration_s"] != base["duration_s"]:
        flags += f" --duration {p['duration_s']:g}"
    if p["paused_runs"] != base["paused_runs"]:
        flags += f" --paused-runs {p['paused_runs']}"
    add(f"Written by `python -m bench.run_all{flags}` on {m['date']}."
        f"{' **Quick mode** (fewer samples and paused runs).' if data['quick'] else ''}\n")  # fmt: skip
    add("| machine | |")
    add("|---|---|")
    for key in ("host", "os", "cpu", "cores", "memory_gib", "python", "postgres", "commit"):
        add(f"| {key} | {m[key]} |")
    add("| versions | " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + " |")
    if pg.get("settings"):
        add("| postgres settings | " + ", ".join(f"{k}={v}" for k, v in pg["settings"].items()) + " |")  # fmt: skip
    add("")
    add(
        f"**The machine has {m['cores']} cores, shared by everything measured here:** the "
        "Stepwise server process, the load generator (one Python process speaking HTTP/1.1 on "
        "raw keep-alive sockets, `bench/lean_http.py`), the "
        "Postgres backends, and — for the peers — the library and its Postgres backends. "
        "Stepwise pays for HTTP (both ends) on the same cores; LangGraph and DBOS run "
        "in-process with no HTTP. Every figure was measured twice (`rep 1 / rep 2`); "
        "ratios use the mean of the two.\n"
    )
    if data.get("settled"):
        waits = ", ".join(
            f"{k} {v['waited_s']:.0f} s ({v['cpu_percent']:.0f}%)"
            for k, v in data["settled"].items()
        )
        add(
            "Before each part the run waited for a quiet machine (a Postgres `CHECKPOINT`, "
            "then CPU use under 10% over two one-second windows): the wait, and the CPU use "
            f"it ended at: {waits}.\n"
        )
    elif data.get("load_average"):
        loads = ", ".join(f"{k} {v[0]:.1f}" for k, v in data["load_average"].items())
        add(
            "1-minute load average when each part started (anything above ~1 before a part "
            f"means other work was running on the machine): {loads}.\n"
        )
    if data.get("rerun"):
        add("Parts measured again separately (`--only`) and merged into these figures: "
            + ", ".join(f"{k} ({v})" for k, v in data["rerun"].items()) + ".\n")  # fmt: skip
    restarts = {k: v for k, v in (data.get("postgres_restarts") or {}).items() if v}
    if restarts:
        add(
            "**Postgres was restarted by something else on the machine during: "
            + ", ".join(f"{k} ({v}x)" for k, v in restarts.items())
            + ".** Figures of those parts include an outage; see `errors` in results.json.\n"
        )
    add(
        f"Parameters: {p['duration_s']:.0f} s per throughput or latency measurement, "
        f"runs in flight {p['concurrency']}, {p['latency_samples']} W3 samples, "
        f"{p['paused_runs']:,} paused runs (W5), {p['blob_bytes']:,}-byte state over "
        f"{p['state_steps']} steps (W5).\n"
    )

    add("## Figures\n")
    add("| figure | Stepwise | LangGraph | DBOS | Stepwise ÷ LangGraph | Stepwise ÷ DBOS |")
    add("|---|---|---|---|---|---|")

    def row(label: str, s: list[float], lgv: list[float], dbv: list[float], d: int = 0) -> None:
        add(f"| {label} | {fmt(s, d)} | {fmt(lgv, d)} | {fmt(dbv, d)} | {ratio(s, lgv)} | {ratio(s, dbv)} |")  # fmt: skip

    for c in p["concurrency"]:
        for key, label in (("runs_per_s", "runs/s"), ("steps_per_s", "durable steps/s")):
            row(f"W1 linear, {c} in flight: {label}",
                *(pick(r, "W1", key, in_flight=c) for r in (sw, lg, db)))  # fmt: skip
    for c in p["concurrency"]:
        row(f"W1C 10 `call` steps to a loopback endpoint, {c} in flight: steps/s",
            *(pick(r, "W1C", "steps_per_s", in_flight=c) for r in (sw, lg, db)))  # fmt: skip
    two = data.get("processes") or {}
    for c in p["concurrency"]:
        row(f"W1 linear, `serve --processes 2`, {c} in flight: durable steps/s",
            pick(two, "W1", "steps_per_s", in_flight=c),
            pick(lg, "W1", "steps_per_s", in_flight=c),
            pick(db, "W1", "steps_per_s", in_flight=c))  # fmt: skip
    for c in p["concurrency"]:
        row(f"W1C `call` steps, `serve --processes 2`, {c} in flight: steps/s",
            *(pick(r, "W1C", "steps_per_s", in_flight=c) for r in (two, lg, db)))  # fmt: skip
    for c in p["concurrency"]:
        for key in ("p50_ms", "p95_ms"):
            row(f"W2 interrupt round trip, {c} in flight: {key.replace('_', ' ')}",
                *(pick(r, "W2", key, in_flight=c) for r in (sw, lg, db)), d=1)  # fmt: skip
    for key in ("p50_ms", "p95_ms"):
        row(f"W3 start → first node.started: {key.replace('_', ' ')}",
            *(pick(r, "W3", key) for r in (sw, lg, db)), d=1)  # fmt: skip
    row("W3 Stepwise: POST /runs answered (202), p50 ms",
        nested(sw, "W3", ("post_runs_202", "p50_ms")), [], [], d=1)  # fmt: skip
    row("W3 Stepwise: POST /runs → the 10-step run completed (all durable, /wait returned), p50 ms",
        nested(sw, "W3", ("run_completed", "p50_ms")), [], [], d=1)  # fmt: skip
    row("W5 paused runs: process RSS growth per paused run (bytes)",
        *(pick(r, "W5", "rss_delta_bytes_per_run") for r in (sw, lg, db)))  # fmt: skip
    row("W5 paused runs: RSS after (MiB)",
        *(pick(r, "W5", "rss_after_mb") for r in (sw, lg, db)), d=1)  # fmt: skip
    row("W5 paused runs: database bytes per paused run",
        *(pick(r, "W5", "db_bytes_per_run") for r in (sw, lg, db)))  # fmt: skip
    row("W5 100 KB state, ~10 B changed per step: database growth per step (bytes, all tables)",
        *(pick(r, "W5_state", "db_growth_per_step") for r in (sw, lg, db)))  # fmt: skip
    row("W5 Stepwise: checkpoint `data` bytes per step (pg_column_size, deltas)",
        pick(sw, "W5_state", "checkpoint_data_bytes_per_step"), [], [])  # fmt: skip
    row("W5 Stepwise: whole checkpoint row bytes per step",
        pick(sw, "W5_state", "checkpoint_row_bytes_per_step"), [], [])  # fmt: skip
    row("W5 Stepwise: event rows per step", pick(sw, "W5_state", "event_rows_per_step"), [], [], d=1)
    row("W5 Stepwise: event bytes per step", pick(sw, "W5_state", "event_bytes_per_step"), [], [])
    add("")

    problems = []
    for name, result in (("Stepwise", sw), ("LangGraph", lg), ("DBOS", db)):
        if result.get("error"):
            problems.append(f"- {name}: {result['error']}")
        for workload in ("W1", "W2"):
            for r in result.get(workload) or []:
                if r.get("errors"):
                    problems.append(
                        f"- {name} {workload} rep {r['rep']}, {r['in_flight']} in flight: "
                        f"{r['errors']} failed requests/runs (excluded from the figure)"
                    )
        problems += [f"- {name}: {e[:300]}" for e in result.get("errors") or []]
    if problems:
        add("Failures during the measurements:\n")
        lines.extend(problems)
        add("")

    add("## Against the hardware limit (pgbench)\n")
    add("pgbench on the same Postgres: one ~1 KB jsonb INSERT per transaction, "
        "`synchronous_commit` as shown above, `-M prepared`.\n")  # fmt: skip
    add("| clients / in flight | pgbench TPS | pgbench latency ms | Stepwise steps/s | Stepwise ÷ pgbench | LangGraph ÷ pgbench | DBOS ÷ pgbench |")  # fmt: skip
    add("|---|---|---|---|---|---|---|")
    for c in p["concurrency"]:
        runs = [r for r in pg.get("runs", []) if r["clients"] == c]
        tps = [float(r["tps"]) for r in runs]
        lat = [float(r["latency_ms"]) for r in runs]
        s = pick(sw, "W1", "steps_per_s", in_flight=c)
        add(f"| {c} | {fmt(tps)} | {fmt(lat, 2)} | {fmt(s)} | {ratio(s, tps)} | "
            f"{ratio(pick(lg, 'W1', 'steps_per_s', in_flight=c), tps)} | "
            f"{ratio(pick(db, 'W1', 'steps_per_s', in_flight=c), tps)} |")  # fmt: skip
    add("")

    agent = data.get("agent") or {}
    if agent:
        add("## The agent step's overhead (Stepwise only)\n")
        add("A one-turn `step: agent` against a fake OpenAI-compatible model on loopback "
            "(`bench/agent_overhead.py`), one run in flight; overhead = agent run minus one-`set` "
            "run minus the model's own latency (p50s).\n")  # fmt: skip
        if agent.get("error"):
            add(f"Failed: {agent['error']}\n")
        else:
            add("| figure | value |")
            add("|---|---|")
            for label, value in (
                ("agent run, POST /runs → completed, p50 ms", agent["agent_run"]["p50_ms"]),
                ("one-`set`-step run, p50 ms", agent["set_run"]["p50_ms"]),
                (
                    "the model's own latency (streamed, httpx), p50 ms",
                    agent["model_call"]["p50_ms"],
                ),
                ("agent step overhead, p50 ms", agent["agent_step_overhead_p50_ms"]),
                ("server CPU per agent run, ms", agent["server_cpu_ms_per_agent_run"]),
                ("server CPU per one-`set` run, ms", agent["server_cpu_ms_per_set_run"]),
            ):
                add(f"| {label} | {value:.1f} |")
            add("")

    add("## W4 SSE fan-out (Stepwise only)\n")
    add("One `stepwise serve`; raw-socket subscribers on the same machine (`bench/sse_fanout.py`); "
        "latency is an event's `ts` to its receipt.\n")  # fmt: skip
    wide = data.get("sse_wide") or {}
    cases = [(f"{c.get('subscribers', '?'):,} subscribers of {c.get('runs', '?')} run(s)", c)
             for c in (sse, wide) if c]  # fmt: skip
    for label, case in cases:
        if case.get("error"):
            add(f"{label}: not measured: {case['error']}.\n")
    cases = [(label, case) for label, case in cases if not case.get("error")]
    if cases:
        add("| figure | " + " | ".join(label for label, _ in cases) + " |")
        add("|---|" + "---|" * len(cases))
        for key in cases[0][1]:
            cells = [case.get(key) for _, case in cases]
            add(f"| {key} | " + " | ".join(
                f"{v:,.1f}" if isinstance(v, float) else str(v) for v in cells) + " |")  # fmt: skip
        add("")

    par = data.get("parallel") or {}
    if par:
        write_parallel(add, par)

    add("## Targets\n")
    targets = []
    lg16 = mean(pick(lg, "W1", "steps_per_s", in_flight=16))
    db16 = mean(pick(db, "W1", "steps_per_s", in_flight=16))
    pg16 = mean([float(r["tps"]) for r in pg.get("runs", []) if r["clients"] == 16])
    two = data.get("processes") or {}
    for where, figures in (("", sw), (", `serve --processes 2`", two)):
        w1 = mean(pick(figures, "W1", "steps_per_s", in_flight=16))
        if w1 is None:
            continue
        for name, peer, times in (
            ("5x LangGraph durable steps/s", lg16, 5),
            ("2x DBOS durable steps/s", db16, 2),
            ("25% of pgbench -c 16 TPS", pg16, 0.25),
        ):
            if not peer:
                continue
            value = f"{100 * w1 / peer:.1f}%" if times < 1 else f"{w1 / peer:.2f}x"
            targets.append(
                (
                    f"W1 @16{where} ≥ {name}",
                    value,
                    w1 >= times * peer,
                    f"{w1:,.0f} of {times * peer:,.0f} steps/s",
                )
            )
    for where, figures in (("", sw), (", `serve --processes 2`", two)):
        w1c = mean(pick(figures, "W1C", "steps_per_s", in_flight=16))
        if w1c is not None and lg16:
            targets.append(
                (
                    f"W1C @16{where} (`call` steps) ≥ LangGraph's W1 @16 (pure steps)",
                    f"{w1c / lg16:.2f}x",
                    w1c >= lg16,
                    f"{w1c:,.0f} of {lg16:,.0f} steps/s",
                )
            )
    if prof.get("server_cpu_ms_per_step") is not None:
        cpu = float(prof["server_cpu_ms_per_step"])
        targets.append(("server CPU per durable step ≤ 0.5 ms (W1 @16)", f"{cpu:.2f} ms", cpu <= 0.5, ""))  # fmt: skip
    w3 = mean(pick(sw, "W3", "p50_ms"))
    if w3 is not None:
        targets.append(("W3 p50 < 10 ms", f"{w3:.1f} ms", w3 < 10, ""))
    w2 = mean(pick(sw, "W2", "p50_ms", in_flight=1))
    if w2 is not None:
        targets.append(("W2 p50 < 5 ms at 1 in flight", f"{w2:.1f} ms", w2 < 5, ""))
    if not sse.get("error") and sse.get("p99_ms") is not None:
        targets.append(("W4 p99 < 50 ms", f"{sse['p99_ms']:.1f} ms", sse["p99_ms"] < 50, ""))
    rss = mean(pick(sw, "W5", "rss_delta_bytes_per_run"))
    if rss is not None:
        targets.append(
            ("W5 a paused run costs no memory", f"{rss:,.0f} B RSS per run", rss < 1024, "")
        )
    cp = mean(pick(sw, "W5_state", "checkpoint_row_bytes_per_step"))
    if cp is not None:
        targets.append(("W5 < 1 KB per checkpoint for the 10-byte change", f"{cp:,.0f} B", cp < 1024, ""))  # fmt: skip
    add("| target | measured | met | |")
    add("|---|---|---|---|")
    for name, value, ok, detail in targets:
        add(f"| {name} | {value} | {'yes' if ok else '**no**'} | {detail} |")
    add("")

    add("## Profile: Stepwise under W1, 16 in flight\n")
    if prof.get("error") or not prof:
        add(f"Not measured: {prof.get('error', 'skipped')}.\n")
    else:
        load = prof["load"]
        add(f"- load while profiling: {load['steps_per_s']:.0f} durable steps/s, "
            f"{load['runs_per_s']:.1f} runs/s over {load['seconds']:.0f} s")  # fmt: skip
        add(f"- server CPU: {prof['server_cpu_ms_per_step']:.2f} ms per step "
            f"({100 * prof['server_cpu_share']:.0f}% of one core)")  # fmt: skip
        add(f"- transactions committed (pg_stat_database.xact_commit): "
            f"{prof['xacts_per_step']:.2f} per step, {prof['xacts_per_run']:.1f} per run "
            "(runner, claim loop and API together; rolled-back transactions not counted)")  # fmt: skip
        add(f"- new database connections during the load: {prof['new_connections']}")
        st = prof.get("statements") or {}
        if st.get("statements"):
            add(f"- statements (round trips) at 1 in flight, from `log_statement = all`: "
                f"{st['statements_per_step']:.1f} per step; per run:")  # fmt: skip
            add("")
            add("| statement | per run (10 steps) |")
            add("|---|---|")
            for kind, n in st["by_kind_per_run"].items():
                add(f"| `{kind}` | {n:.1f} |")
        add("")
        if prof.get("profile"):
            add(f"py-spy, {prof['profile']['samples']} samples; the top frames by own time "
                "(share of samples) and the app's frames by inclusive time. SQLAlchemy runs "
                "statements in greenlets, whose stacks py-spy shows as separate roots, so "
                "the app frames' inclusive shares leave those out:\n")  # fmt: skip
            add("| own time | frame |")
            add("|---|---|")
            for name, share in prof["profile"]["own"][:15]:
                add(f"| {share:.1f}% | `{name}` |")
            add("")
            add("| inclusive | app frame |")
            add("|---|---|")
            for name, share in prof["profile"]["app_inclusive"][:20]:
                add(f"| {share:.1f}% | `{name}` |")
            add("")
    baseline = data.get("baseline")
    if baseline:
        write_comparison(add, baseline["figures"], key_figures(data), baseline.get("text", ""))
    notes = data.get("notes")
    if notes:
        if not notes.lstrip().startswith("#"):  # notes may bring their own headings
            add("## Notes\n")
        add(notes)
    path.write_text("\n".join(lines) + "\n")


def write_parallel(add: Any, par: dict[str, Any]) -> None:
    """The parallel-branches section (``bench/parallel_suite.py``)."""
    add("## Parallel branches and `step: map` (Stepwise only)\n")
    if par.get("error"):
        add(f"Not measured: {par['error']}.\n")
        return
    small, fan, big = par["map_small"], par["fanout"], par["map_big"]
    mib = 2**20
    add("| figure | value |")
    add("|---|---|")
    for label, value in (
        (f"{small['items']}-item map of `set` steps (child workflow of one `set` node, "
         "`max_concurrency: 8`), POST /runs → completed: items/s", fmt(small["items_per_s"])),
        (f"fan-out of `call` steps that each take {fan['call_s']} s: 1 branch, wall s",
         fmt(fan["one_branch_s"], 2)),
        (f"the same with {fan['branches']} branches, wall s "
         f"({fan['branches']} x {fan['call_s']} s one after the other: "
         f"{fan['branches'] * fan['call_s']:.1f} s)", fmt(fan["n_branches_s"], 2)),
        (f"{big['items']:,}-item map: wall s (items/s)",
         f"{big['seconds']:.1f} ({big['items_per_s']:.0f} items/s)"),
        (f"{big['items']:,}-item map: server RSS before → peak",
         f"{big['rss_before_bytes'] / mib:.1f} → {big['rss_peak_bytes'] / mib:.1f} MiB"),
        (f"{big['items']:,}-item map: checkpoint rows / snapshots among them",
         f"{big['checkpoint_rows']:,} / {big['snapshots']:,}"),
        (f"{big['items']:,}-item map: checkpoint `data` bytes (pg_column_size)",
         f"{big['checkpoint_data_bytes'] / 1e6:.1f} MB "
         f"({big['checkpoint_data_bytes'] / max(1, big['checkpoint_rows']) / 1e3:.1f} KB a row)"),
        (f"{big['items']:,}-item map: event rows / bytes",
         f"{big['event_rows']:,} / {big['event_bytes'] / 1e6:.1f} MB"),
        (f"{big['items']:,}-item map: database growth (all tables and indexes)",
         f"{big['database_growth_bytes'] / 1e6:.1f} MB"),
    ):  # fmt: skip
        add(f"| {label} | {value} |")
    add("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short measurements")
    parser.add_argument("--duration", type=float, help="seconds per throughput measurement")
    parser.add_argument("--paused-runs", type=int, help="W5 paused runs")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--notes", help="a Markdown file appended to RESULTS.md as Notes")
    parser.add_argument("--render", help="only re-render RESULTS.md from this results.json")
    parser.add_argument(
        "--baseline",
        default=str(BASELINE) if BASELINE.exists() else None,
        help="an earlier results.json to compare Stepwise's figures with "
        "(default bench/results_baseline.json; 'none' for no comparison)",
    )
    args = parser.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
        if args.notes:
            data["notes"] = Path(args.notes).read_text()
        attach_baseline(data, args.baseline)
        Path(args.render).write_text(json.dumps(data, indent=1, default=str))
        write_results(data, Path(args.out))
        log(f"wrote {args.out}")
        return
    params = dict(QUICK if args.quick else DEFAULTS)
    if args.duration:
        params["duration_s"] = args.duration
    if args.paused_runs:
        params["paused_runs"] = args.paused_runs
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    data: dict[str, Any] = {"machine": machine(), "params": params, "quick": args.quick}
    data["load_average"] = {}
    data["settled"] = {}
    data["postgres_restarts"] = {}
    saved = HERE / "results.json"
    if set(parts) < set(PARTS) and saved.exists():
        # re-running some parts: keep the other parts' figures (and their machine/date)
        previous = json.loads(saved.read_text())
        if previous.get("params") == params and previous.get("quick") == args.quick:
            rerun = {**previous.get("rerun", {}), **{p: data["machine"]["date"] for p in parts}}
            data = {**previous, "rerun": rerun}
            data.setdefault("load_average", {})
            data.setdefault("settled", {})
            data.setdefault("postgres_restarts", {})
        else:
            log("results.json was measured with other parameters: not merging")
    for part in parts:
        data["settled"][part] = settle()
        data["load_average"][part] = [round(x, 2) for x in os.getloadavg()]
        log_offset = pg_log_size()
        if part == "sse":
            data["sse"] = run_sse(args.quick)
            data["sse_wide"] = run_sse(args.quick, subscribers=10_000, runs=100)
        elif part == "parallel":
            data[part] = run_suite(
                SUITES[part],
                {"small_reps": 3, "big_items": 2_000} if args.quick else {},
            )
        elif part == "processes":
            data[part] = run_suite(SUITES[part], {**params, "processes": 2, "only": ["W1", "W1C"]})
        elif part == "agent":
            data[part] = run_suite(SUITES[part], {"samples": 60 if args.quick else 200})
        elif part == "profile":
            data["profile"] = run_suite(
                SUITES[part], {"duration_s": max(10.0, params["duration_s"])}
            )
        else:
            data[part] = run_suite(SUITES[part], params)
        data["postgres_restarts"][part] = pg_restarts_since(log_offset)
        (HERE / "results.json").write_text(json.dumps(data, indent=1, default=str))
    if args.notes:
        data["notes"] = Path(args.notes).read_text()
    attach_baseline(data, args.baseline)
    (HERE / "results.json").write_text(json.dumps(data, indent=1, default=str))
    write_results(data, Path(args.out))
    log(f"wrote {args.out}")


def attach_baseline(data: dict[str, Any], path: str | None) -> None:
    """Keep the earlier run's key figures (and the text naming what changed since) in ``data``."""
    if not path or path == "none":
        data.pop("baseline", None)
        return
    earlier = json.loads(Path(path).read_text())
    data["baseline"] = {
        "path": os.path.relpath(path, ROOT),
        "figures": key_figures(earlier),
        "text": earlier.get("changes_since", ""),
    }


if __name__ == "__main__":
    main()

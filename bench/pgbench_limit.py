"""The hardware limit: pgbench on the same Postgres, one ~1 KB jsonb INSERT per transaction.

python -m bench.pgbench_limit --params '{"duration_s": 5}'
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.common import DEFAULTS, emit, log, query, scratch_db, suite_args

DATABASE = "bench_pgbench"


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    fallback = Path("/usr/lib/postgresql/15/bin/pgbench")
    if fallback.exists():
        return str(fallback)
    raise RuntimeError("pgbench not found (apt-get install postgresql-client)")


def script() -> str:
    doc = json.dumps({"run": "x" * 16, "state": {"n": 1, "pad": "p" * 940}, "node": "s1"})
    assert 950 < len(doc) < 1100, len(doc)
    return f"INSERT INTO docs (doc) VALUES ('{doc}'::jsonb);\n"


def run_pgbench(url: str, clients: int, duration_s: float, script_path: str) -> dict[str, Any]:
    threads = min(clients, 2)
    command = [
        pgbench_binary(),
        "-n",
        "-M", "prepared",
        "-c", str(clients),
        "-j", str(threads),
        "-T", str(max(1, round(duration_s))),
        "-f", script_path,
        url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    assert tps, done.stdout
    assert latency, done.stdout
    return {"clients": clients, "tps": float(tps.group(1)), "latency_ms": float(latency.group(1))}


def run_suite(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    url = scratch_db(DATABASE)
    query(url, "CREATE TABLE docs (id bigserial PRIMARY KEY, doc jsonb NOT NULL)")
    settings = {
        name: query(url, f"SHOW {name}")[0][0]
        for name in ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers")
    }
    out: dict[str, Any] = {"system": "pgbench", "settings": settings, "runs": []}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script())
    for rep in range(p["reps"]):
        for clients in p["concurrency"]:
            result = run_pgbench(url, clients, p["duration_s"], handle.name)
            log(f"pgbench rep {rep + 1} -c {clients}: {result['tps']:.0f} tps")
            out["runs"].append({"rep": rep + 1, **result})
    Path(handle.name).unlink()
    return out


def main() -> None:
    emit(run_suite(suite_args()))


if __name__ == "__main__":
    main()

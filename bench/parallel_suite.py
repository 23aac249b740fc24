"""Parallel branches and ``step: map`` (DESIGN §10) on a real ``stepwise serve`` process.

    python -m bench.parallel_suite --params '{"big_items": 10000}'

- a 100-item map of ``set`` steps: items per second (POST /runs → the run completed);
- a 10-branch fan-out of ``call`` steps that each take ``call_s`` against a loopback
  endpoint, against the same with one branch: wall time;
- a ``big_items``-item map: wall time, the server's RSS (before, peak), and what the run
  left in the database (checkpoint and event rows and bytes).

The figures are printed as JSON on the last line (``bench.common.emit``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import database_bytes, emit, log, query, suite_args
from bench.stepwise_suite import Server, http_client, start, store, wait

DEFAULTS = {"small_items": 100, "small_reps": 5, "branches": 10, "call_s": 0.5, "big_items": 10_000}


class SlowEndpoint:
    """A loopback ``call`` endpoint that answers ``succeeded`` after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay_s)
                body = json.dumps({"status": "succeeded", "output": {"ok": True}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/step"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ITEM = {
    "name": "bench-item",
    "nodes": {"one": {"step": "set", "set": {"v": "{{ inputs.n + 1 }}"}}},
    "output": "{{ state.v }}",
}


def map_workflow(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": {
            "each": {
                "step": "map",
                "with": {
                    "workflow": "bench-item",
                    "items": "{{ inputs.items }}",
                    "inputs": {"n": "{{ item }}"},
                    "max_concurrency": 8,
                },
                "set": {"count": "{{ output | length }}"},
            }
        },
    }


def fanout_workflow(name: str, branches: int, url: str) -> dict[str, Any]:
    ids = [f"b{k}" for k in range(branches)]
    nodes: dict[str, Any] = {"start": {"step": "set"}}
    nodes.update({b: {"step": "call", "with": {"url": url, "timeout_s": 60}} for b in ids})
    nodes["join"] = {"step": "set", "join": "all"}
    edges: list[dict[str, Any]] = [{"from": "start", "to": ids}]
    edges += [{"from": b, "to": "join"} for b in ids]
    return {"name": name, "nodes": nodes, "edges": edges, "max_concurrency": max(8, branches)}


async def timed_run(
    client: Any, workflow: str, inputs: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    run = await wait(client, await start(client, workflow, inputs))
    took = time.perf_counter() - began
    if run["status"] != "completed":
        raise RuntimeError(f"{workflow} ended {run['status']}: {run.get('error')}")
    return took, run


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def run_suite(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    out: dict[str, Any] = {"params": p}
    endpoint = SlowEndpoint(p["call_s"])
    env = {"STEPWISE_MAX_STEPS": "1000000", "STEPWISE_ALLOW_PRIVATE_NETWORKS": "true"}
    try:
        async with Server("bench_parallel", env) as server, http_client(server.base, 4) as client:
            await store(client, ITEM)
            await store(client, map_workflow("bench-map"))
            await store(client, fanout_workflow("bench-fan-1", 1, endpoint.url))
            await store(client, fanout_workflow("bench-fan-n", p["branches"], endpoint.url))

            log("parallel: warm-up")
            await timed_run(client, "bench-map", {"items": list(range(10))})
            small = list(range(p["small_items"]))
            rates = []
            for _ in range(p["small_reps"]):
                took, run = await timed_run(client, "bench-map", {"items": small})
                assert run["state"]["count"] == len(small)
                rates.append(len(small) / took)
            out["map_small"] = {"items": len(small), "items_per_s": rates}

            one = [(await timed_run(client, "bench-fan-1", {}))[0] for _ in range(3)]
            many = [(await timed_run(client, "bench-fan-n", {}))[0] for _ in range(3)]
            out["fanout"] = {
                "call_s": p["call_s"],
                "branches": p["branches"],
                "one_branch_s": one,
                "n_branches_s": many,
            }

            log(f"parallel: a {p['big_items']}-item map")
            before_db = database_bytes(server.url)
            rss_before = server.rss()
            with PeakRss(server) as rss:
                took, run = await timed_run(
                    client, "bench-map", {"items": list(range(p["big_items"]))}
                )
            run_id = run["id"]
            checkpoints = query(
                server.url,
                "SELECT count(*), coalesce(sum(pg_column_size(data)), 0), "
                "count(*) FILTER (WHERE base_id IS NULL) FROM checkpoints WHERE run_id = %s",
                (run_id,),
            )[0]
            events = query(
                server.url,
                "SELECT count(*), coalesce(sum(pg_column_size(e.*)), 0) FROM events e "
                "WHERE run_id = %s",
                (run_id,),
            )[0]
            out["map_big"] = {
                "items": p["big_items"],
                "seconds": took,
                "items_per_s": p["big_items"] / took,
                "rss_before_bytes": rss_before,
                "rss_peak_bytes": rss.peak,
                "checkpoint_rows": int(checkpoints[0]),
                "checkpoint_data_bytes": int(checkpoints[1]),
                "snapshots": int(checkpoints[2]),
                "event_rows": int(events[0]),
                "event_bytes": int(events[1]),
                "database_growth_bytes": database_bytes(server.url) - before_db,
            }
    finally:
        endpoint.close()
    return out


def main() -> None:
    emit(asyncio.run(run_suite(suite_args())))


if __name__ == "__main__":
    main()

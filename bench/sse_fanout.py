"""SSE fan-out: many subscribers of one or many runs on one real ``stepwise serve`` process.

    python -m bench.sse_fanout [--subscribers 1000] [--runs 1] [--rounds 20] [--wait-s 0.1]
    python -m bench.sse_fanout --wide      # 10,000 subscribers across 100 runs (100 each)

Starts ``stepwise serve`` on a scratch Postgres database, starts ``runs`` runs that pause
at an interrupt, connects the subscribers (spread evenly over the runs, raw sockets, from
``Last-Event-ID`` = the run's current seq, so everything they get is live), answers every
interrupt and lets the runs emit their events: ``rounds`` times a ``set`` node and a
``wait`` node. Measures delivery latency (event ``ts`` → receipt by the subscriber),
checks that every subscriber got every event of its run exactly once, and samples the
server's RSS. Prints a short table.

The open-file limit's soft value is raised to its hard value first (the server started
here inherits it): each subscriber is a socket on both sides.

The subscribers and the server share the machine's cores: on a small machine the
latency includes the client's own parsing of ``subscribers x events`` frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import drop_db, log, pct, scratch_db

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = f"bench_sse_{os.getpid()}"


def workflow(rounds: int, wait_s: float) -> dict[str, Any]:
    return {
        "name": "fanout",
        "state": {"n": 0},
        "nodes": {
            "gate": {"step": "interrupt", "with": {"question": "go?"}},
            "tick": {
                "step": "set",
                "with": {"n": "{{ state.n + 1 }}"},
                "set": {"n": "{{ output.n }}"},
                "max_iterations": rounds + 1,
            },
            "pause": {"step": "wait", "with": {"seconds": wait_s}, "max_iterations": rounds + 1},
            "done": {"step": "set", "with": {"n": "{{ state.n }}"}},
        },
        "edges": [
            {"from": "gate", "to": "tick"},
            {"from": "tick", "to": "pause"},
            {"from": "pause", "to": "tick", "when": f"state.n < {rounds}", "loop": True},
            {"from": "pause", "to": "done"},
        ],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )


class Subscriber(asyncio.Protocol):
    """One SSE subscriber on a raw socket: an HTTP/1.1 GET, then the chunked body, kept
    with each chunk's time of receipt and parsed after the run (``parse``). No coroutine
    per chunk, no HTTP library and no parsing while the server works: the load generator
    shares the machine's cores with the server, so it must stay as cheap as it can be."""

    def __init__(self, request: bytes, run_id: str) -> None:
        self.request = request
        self.run_id = run_id
        self.latencies: list[float] = []
        self.seqs: list[int] = []
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()
        self.error: str | None = None
        self.closed_by_server = False
        self._head = b""  # the response head, until its blank line
        self._chunks = b""  # the chunked body not yet decoded
        self._sse = b""  # decoded body not yet split into frames
        self._stamps: dict[bytes, float] = {}
        self._received: list[tuple[float, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.connected.is_set():
            self._received.append((time.time(), data))
            return
        self._take(time.time(), data)

    def parse(self) -> None:
        for received, data in self._received:
            self._take(received, data)
        self._received = []

    def _take(self, received: float, data: bytes) -> None:
        if not self.connected.is_set():
            self._head += data
            head, sep, rest = self._head.partition(b"\r\n\r\n")
            if not sep:
                return
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.error = f"HTTP {status.decode()}"
            self.connected.set()
            data = rest
        self._chunks += data
        while True:  # Transfer-Encoding: chunked
            size_end = self._chunks.find(b"\r\n")
            if size_end < 0:
                break
            size = int(self._chunks[:size_end], 16)
            if size == 0:
                self.closed_by_server = True
                self._chunks = b""
                break
            end = size_end + 2 + size
            if len(self._chunks) < end + 2:
                break
            self._sse += self._chunks[size_end + 2 : end]
            self._chunks = self._chunks[end + 2 :]
        *frames, self._sse = self._sse.split(b"\n\n")
        for frame in frames:
            if not frame.startswith(b"id: "):
                continue  # a keep-alive comment
            seq = int(frame[4 : frame.index(b"\n")])  # "id: <seq>" comes first
            at = frame.index(b'"ts":"') + 6
            stamp = frame[at : frame.index(b'"', at)]
            ts = self._stamps.get(stamp)
            if ts is None:
                ts = self._stamps[stamp] = datetime.fromisoformat(stamp.decode()).timestamp()
            self.latencies.append(received - ts)
            self.seqs.append(seq)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = repr(exc)
        self.connected.set()
        self.finished.set()

    async def run(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: self, "127.0.0.1", port)
        except OSError as exc:
            self.error = repr(exc)
            self.connected.set()
            return
        try:
            await self.finished.wait()
        finally:
            transport.close()


async def sample_rss(process: psutil.Process, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            samples.append(process.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def raise_open_files(needed: int) -> None:
    """Raise the soft limit on open files to the hard one; refuse when even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} sockets needed")


async def connect(subscribers: list[Subscriber], port: int, wave: int) -> list[asyncio.Task[None]]:
    """Connect in waves of ``wave`` (a burst of 10,000 would overflow the listen backlog
    and wait for SYN retransmits); returns once every subscriber has its response head."""
    tasks: list[asyncio.Task[None]] = []
    for i in range(0, len(subscribers), wave):
        group = subscribers[i : i + wave]
        tasks += [asyncio.create_task(s.run(port)) for s in group]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in group)), 120)
    return tasks


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files(args.subscribers + 200)
    url = scratch_db(DB_NAME)
    port = free_port()
    env = {
        **os.environ,
        "STEPWISE_DATABASE_URL": url,
        "STEPWISE_LOG_LEVEL": "WARNING",
        "STEPWISE_WORKERS": str(args.workers),
        "STEPWISE_SSE_MAX_CONNECTIONS": str(args.subscribers + 100),
    }
    server = start_server(port, env)
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("stepwise serve did not become ready")
            proc = psutil.Process(server.pid)
            rss_idle = proc.memory_info().rss

            stored = await client.post("/workflows", json=workflow(args.rounds, args.wait_s))
            stored.raise_for_status()
            runs = []
            for _ in range(args.runs):
                run = (
                    await client.post("/runs/wait", json={"workflow": "fanout", "inputs": {}})
                ).json()
                assert run["status"] == "interrupted", run
                page = await client.get(
                    f"/runs/{run['id']}/events",
                    params={"limit": 500},
                    headers={"Accept": "application/json"},
                )
                runs.append((run, page.json()["items"][-1]["seq"]))

            log(f"connecting {args.subscribers} subscribers to {args.runs} run(s)")
            subscribers: list[Subscriber] = []
            for i in range(args.subscribers):
                run, after = runs[i % args.runs]
                request = (
                    f"GET /runs/{run['id']}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Accept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n"
                ).encode()
                subscribers.append(Subscriber(request, run["id"]))
            t0 = time.perf_counter()
            tasks = await connect(subscribers, port, args.connect_wave)
            connect_s = time.perf_counter() - t0
            await asyncio.sleep(0.5)
            rss_connected = proc.memory_info().rss

            samples: list[int] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(proc, samples, stop))
            log(f"answering the interrupt{'s' if args.runs > 1 else ''}: the runs emit events")
            t1 = time.perf_counter()
            server_cpu0 = proc.cpu_times()
            client_cpu0 = sum(os.times()[:2])
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"/runs/{run['id']}/response",
                        json={"interrupt_id": run["interrupt"]["id"], "value": "go"},
                    )
                    for run, _ in runs
                )
            )
            for answer in answers:
                answer.raise_for_status()
            await asyncio.wait_for(asyncio.gather(*tasks), 300)
            run_s = time.perf_counter() - t1
            server_cpu1 = proc.cpu_times()
            server_user = server_cpu1.user - server_cpu0.user
            server_sys = server_cpu1.system - server_cpu0.system
            client_cpu = sum(os.times()[:2]) - client_cpu0
            stop.set()
            await sampler

            expected: dict[str, list[int]] = {}
            for run, after in runs:
                events = await client.get(
                    f"/runs/{run['id']}/events",
                    params={"after": after, "limit": 500},
                    headers={"Accept": "application/json"},
                )
                expected[run["id"]] = [e["seq"] for e in events.json()["items"]]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        drop_db(DB_NAME)

    for s in subscribers:
        s.parse()
    latencies = [x for s in subscribers for x in s.latencies]
    complete = sum(1 for s in subscribers if s.seqs == expected[s.run_id] and s.closed_by_server)
    errors = [s.error for s in subscribers if s.error]
    ms = [x * 1000 for x in latencies]
    return {
        "subscribers": args.subscribers,
        "runs": args.runs,
        "events_per_subscriber": len(expected[runs[0][0]["id"]]),
        "deliveries": len(latencies),
        "complete_subscribers": complete,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "connect_s": connect_s,
        "run_s": run_s,
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else None,
        "server_cpu_s": server_user + server_sys,
        "server_sys_s": server_sys,
        "client_cpu_s": client_cpu,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_connected_mb": rss_connected / 2**20,
        "rss_peak_mb": max(samples, default=rss_connected) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="runs the subscribers spread over")
    parser.add_argument(
        "--wide", action="store_true", help="10,000 subscribers across 100 runs (100 each)"
    )
    parser.add_argument("--connect-wave", type=int, default=500, help="connections at once")
    parser.add_argument("--rounds", type=int, default=20, help="set+wait rounds of the run")
    parser.add_argument("--wait-s", type=float, default=0.1, help="each wait node's seconds")
    parser.add_argument("--workers", type=int, default=4, help="runners of the server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if args.wide:
        args.subscribers, args.runs = 10_000, 100
    r = asyncio.run(bench(args))
    rows = [
        ("subscribers", f"{r['subscribers']}"),
        ("runs", f"{r['runs']}"),
        ("events per subscriber", f"{r['events_per_subscriber']}"),
        ("deliveries", f"{r['deliveries']}"),
        ("subscribers with every event once", f"{r['complete_subscribers']}"),
        ("errors", f"{r['errors']}" + (f" ({r['first_error']})" if r["errors"] else "")),
        ("connect all (s)", f"{r['connect_s']:.2f}"),
        ("run, answer → last event received (s)", f"{r['run_s']:.2f}"),
        ("latency p50 (ms)", f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"),
        ("latency p99 (ms)", f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"),
        ("latency max (ms)", f"{r['max_ms']:.1f}" if r["max_ms"] is not None else "-"),
        ("server CPU during the run (s)", f"{r['server_cpu_s']:.1f}"),
        ("  of which system (s)", f"{r['server_sys_s']:.1f}"),
        ("client CPU during the run (s)", f"{r['client_cpu_s']:.1f}"),
        ("server RSS idle (MiB)", f"{r['rss_idle_mb']:.0f}"),
        ("server RSS, subscribers connected (MiB)", f"{r['rss_connected_mb']:.0f}"),
        ("server RSS peak during the run (MiB)", f"{r['rss_peak_mb']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nSSE fan-out ({r['runs']} run(s), one `stepwise serve` process, Postgres)\n")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

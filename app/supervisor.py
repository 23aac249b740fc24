"""``stepwise serve --processes N``: N API+runner processes sharing one listening socket.

The parent migrates the database once, reserves the port and starts N ``stepwise serve``
children; each listens on the port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them, and each child's runner pool claims runs from the same Postgres
database (runs posted to a child are reserved for its runners). The parent serves nothing itself: it forwards
SIGTERM/SIGINT to every child and waits for them (each drains as a single ``serve``
does); a child that dies once it served is started again, unless the parent is stopping;
one that dies before it could serve (it writes a byte on a pipe once up) failed to start,
and the parent stops the others.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from app.settings import Settings

log = logging.getLogger("app.supervisor")

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


class Child:
    """A ``serve`` child, and whether it said it was up (on its pipe)."""

    def __init__(self, process: subprocess.Popen[bytes], ready: int) -> None:
        self.process = process
        self.ready = ready  # the pipe's read end; -1 once it said so
        self.up = False

    def poll_up(self) -> bool:
        if not self.up and self.ready >= 0:
            try:
                self.up = os.read(self.ready, 1) == b"1"
            except BlockingIOError:
                return False
            if self.up:
                self.close()
        return self.up

    def close(self) -> None:
        if self.ready >= 0:
            os.close(self.ready)
            self.ready = -1


class ProcessesRefused(Exception):
    """The configuration cannot run several processes (SQLite)."""


def check_processes(settings: Settings, processes: int) -> None:
    if processes > 1 and settings.is_sqlite:
        raise ProcessesRefused(
            f"--processes {processes} needs PostgreSQL: a SQLite database is served by one "
            "process (set STEPWISE_DATABASE_URL to a postgresql:// URL, or use one process)"
        )


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    """A socket on the shared port: the parent's (bound, not listening: it only holds
    the port) or a child's (listening; the kernel balances connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def listen_shared(host: str, port: int) -> socket.socket:
    """A child's listening socket on the shared port."""
    return bind(host, port, listen=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the parent dies (even by SIGKILL), so
    that no orphaned ``serve`` keeps claiming runs (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, processes: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.processes = processes
        self.children: list[Child] = []
        self.stopping = False

    def _spawn(self) -> Child:
        env = {**os.environ, "STEPWISE_MIGRATE_ON_START": "false", "STEPWISE_PROCESSES": "1"}
        ready, said = os.pipe()
        os.set_blocking(ready, False)
        command = [sys.executable, "-m", "app", "serve", "--host", self.host]
        command += ["--port", str(self.port), "--shared-port", "--ready-fd", str(said)]
        try:
            process = subprocess.Popen(
                command, env=env, preexec_fn=_die_with_parent, pass_fds=(said,)
            )
        finally:
            os.close(said)
        log.info("started serve process %d", process.pid)
        return Child(process, ready)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Run until a signal stops every child; the exit status."""
        if self.settings.migrate_on_start:
            from app.store.database import migrate

            asyncio.run(migrate(self.settings.database_url))
        sock = bind(self.host, self.port, listen=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        log.info("serving http://%s:%d with %d processes", self.host, self.port, self.processes)
        self.children = [self._spawn() for _ in range(self.processes)]
        status = 0
        while any(child.process.poll() is None for child in self.children):
            time.sleep(POLL_S)
            for k, child in enumerate(self.children):
                was_up = child.up
                up = child.poll_up()
                pid = child.process.pid
                if up and not was_up:
                    log.info("serve process %d is up", pid)
                code = child.process.poll()
                if code is None or self.stopping:
                    continue
                child.close()
                if not up:
                    log.error("serve process %d failed to start (exit %d)", pid, code)
                    status = 1
                    self._stop(signal.SIGTERM, None)
                    break
                log.warning("serve process %d exited (%d); starting another", pid, code)
                self.children[k] = self._spawn()
        for child in self.children:
            child.close()
        sock.close()
        return status

"""W1C's loopback endpoint: a ``call`` step target that answers ``succeeded`` at once.

    python -m bench.call_endpoint PORT

A raw asyncio protocol (HTTP/1.1, keep-alive, one canned answer) in its own process, so
that it costs the systems measured as little CPU as possible and the same for each:
Stepwise's ``call`` steps, LangGraph's nodes and DBOS's steps all POST to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
ANSWER = b'{"status":"succeeded","output":{"ok":true}}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)


class _Answer(asyncio.Protocol):
    """Answers every complete request (headers and Content-Length body) in the buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class CallEndpoint:
    """The endpoint as a subprocess: ``with CallEndpoint() as ep: ep.url``."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/step"

    def __enter__(self) -> CallEndpoint:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.call_endpoint", str(self.port)], cwd=ROOT
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        raise RuntimeError("the call endpoint did not start")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

"""Fixtures of the step tests: loopback servers, a guarded client, a test certificate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from loopback_server import LoopbackServer, TlsFiles

from app.steps.clients import make_http_client


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(also_ipv6=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., LoopbackServer]]:
    started: list[LoopbackServer] = []

    def make(**kwargs: Any) -> LoopbackServer:
        srv = LoopbackServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """A guarded client (make_http_client), closed after the test."""
    async with make_http_client() as c:
        yield c


@pytest.fixture(scope="session")
def localhost_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate valid for the name ``localhost`` only (no IP SAN)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(files.key), "-out", str(files.cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return files

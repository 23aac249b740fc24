"""The ``stepwise`` command: serve, worker, migrate, and client verbs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from app.settings import Settings

cli = typer.Typer(help="Stepwise: durable workflow execution over HTTP.", no_args_is_help=True)
console = Console(stderr=True)
log = logging.getLogger("app.cli")


def _setup_logging(settings: Settings) -> None:
    fmt = (
        '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if settings.log_json
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=settings.log_level.upper(), format=fmt, stream=sys.stderr)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind (STEPWISE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (STEPWISE_PORT)")] = None,
) -> None:
    """Run the HTTP API and a pool of runners (migrates the database first)."""
    import uvicorn

    from app.main import create_app

    settings = Settings()
    _setup_logging(settings)
    bind = host or settings.host
    if not settings.api_keys and not _is_loopback(bind):
        log.warning(
            "binding %s without STEPWISE_API_KEYS: anyone who reaches it can run workflows", bind
        )
    _claim_sqlite(settings)
    app = create_app(settings)

    class Server(uvicorn.Server):
        """uvicorn drains HTTP connections before the lifespan shutdown; the runners
        must stop claiming, and start giving their runs back, as soon as the signal comes."""

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._stepwise_loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            runtime = getattr(app.state, "runtime", None)
            loop = getattr(self, "_stepwise_loop", None)
            if runtime is not None and loop is not None:
                loop.call_soon_threadsafe(runtime.begin_shutdown)

    config = uvicorn.Config(
        app,
        host=bind,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    Server(config).run()


def _claim_sqlite(settings: Settings) -> None:
    """Refuse, before anything starts, to run a second runner process on one SQLite file."""
    if not settings.is_sqlite or settings.workers == 0:
        return
    from app.engine.pool import SqliteAlreadyServed, lock_sqlite

    try:
        lock_sqlite(settings.database_url)  # held (and shared with the pool) until exit
    except SqliteAlreadyServed as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@cli.command()
def worker() -> None:
    """Run runners only (no HTTP), against the configured database."""
    from app.runtime import Runtime

    settings = Settings()
    _setup_logging(settings)
    if settings.workers == 0:
        console.print("[red]error:[/red] STEPWISE_WORKERS=0: a worker with no runners does nothing")
        raise typer.Exit(1)
    _claim_sqlite(settings)

    async def main() -> None:
        runtime = Runtime(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runtime.start()
        log.info("worker ready")
        await stop.wait()
        log.info("stopping: finishing runs in flight (grace %ss)", settings.shutdown_grace_s)
        await runtime.stop()
        log.info("worker stopped")

    asyncio.run(main())


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    down: Annotated[bool, typer.Option("--down", help="downgrade to REVISION instead")] = False,
) -> None:
    """Apply (or revert) database migrations."""
    from app.store.database import migrate as run_migrations

    settings = Settings()
    _setup_logging(settings)
    asyncio.run(run_migrations(settings.database_url, revision, down=down))
    console.print(f"[green]database at {'revision ' + revision if down else 'head'}[/green]")


# -- client verbs -----------------------------------------------------------------------------

ServerOpt = Annotated[str, typer.Option(envvar="STEPWISE_URL", help="server URL")]
KeyOpt = Annotated[str | None, typer.Option(envvar="STEPWISE_API_KEY", help="API key")]


def _client(server: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server, headers=headers, timeout=330)


def _show(response: httpx.Response) -> None:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    Console().print_json(json.dumps(body))
    if response.is_error:
        raise typer.Exit(1)


@cli.command("apply")
def apply_workflow(
    path: Path, server: ServerOpt = "http://127.0.0.1:8000", api_key: KeyOpt = None
) -> None:
    """Store a workflow definition from a JSON or YAML file."""
    kind = "application/yaml" if path.suffix in (".yaml", ".yml") else "application/json"
    with _client(server, api_key) as client:
        _show(client.post("/workflows", content=path.read_bytes(), headers={"Content-Type": kind}))


@cli.command("run")
def start_run(
    workflow: str,
    inputs: Annotated[str, typer.Option(help="inputs as JSON")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait until it completes, fails or pauses")] = True,
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Start a run of a stored workflow."""
    body = {"workflow": workflow, "inputs": json.loads(inputs)}
    with _client(server, api_key) as client:
        _show(client.post("/runs/wait" if wait else "/runs", json=body))


@cli.command("status")
def run_status(
    run_id: str, server: ServerOpt = "http://127.0.0.1:8000", api_key: KeyOpt = None
) -> None:
    """Show a run."""
    with _client(server, api_key) as client:
        _show(client.get(f"/runs/{run_id}"))


@cli.command("approve")
def approve(
    run_id: str,
    value: Annotated[str, typer.Option(help="the answer's value as JSON")] = "null",
    reject: Annotated[bool, typer.Option(help="reject instead of approving")] = False,
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Answer a run's pending interrupt."""
    with _client(server, api_key) as client:
        run = client.get(f"/runs/{run_id}").json()
        interrupt = run.get("interrupt")
        if not interrupt:
            console.print(f"[red]run {run_id} has no pending interrupt ({run.get('status')})[/red]")
            raise typer.Exit(1)
        body = {
            "interrupt_id": interrupt["id"],
            "status": "rejected" if reject else "approved",
            "value": json.loads(value),
        }
        _show(client.post(f"/runs/{run_id}/response", json=body))


def main() -> None:
    cli()

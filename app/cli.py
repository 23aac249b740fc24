"""The ``stepwise`` command: serve, worker, migrate, and client verbs."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
from datetime import timedelta
from types import FrameType
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from app.settings import Settings
from app.terminal.verbs import register as register_run_verbs
from app.terminal.workflow_verbs import register as register_workflow_verbs

cli = typer.Typer(help="Stepwise: durable workflow execution over HTTP.", no_args_is_help=True)
console = Console(stderr=True)
report_out = Console(soft_wrap=True, highlight=False)
log = logging.getLogger("app.cli")


def load_settings() -> Settings:
    """The settings from the environment; invalid ones end the command with a line for
    each (the variable, what is wrong with its value), not a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "STEPWISE_" + "_".join(str(part) for part in error["loc"]).upper()
            console.print(f"[red]error:[/red] {name}: {error['msg']}", highlight=False)
        raise typer.Exit(2) from None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(settings: Settings) -> None:
    """The root logger's one handler, on stderr; uvicorn's own loggers (its start-up
    lines, the access log) go through it too (``log_config=None`` below)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter()
        if settings.log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


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
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port (STEPWISE_PORT)")] = None,
    processes: Annotated[
        int | None,
        typer.Option(min=1, help="API+runner processes on the port (STEPWISE_PROCESSES)"),
    ] = None,
    shared_port: Annotated[
        bool, typer.Option(hidden=True, help="one of --processes: listen with SO_REUSEPORT")
    ] = False,
    ready_fd: Annotated[
        int | None, typer.Option(hidden=True, help="one of --processes: say 'up' on this fd")
    ] = None,
) -> None:
    """Run the HTTP API and a pool of runners (migrates the database first)."""
    import uvicorn

    from app.main import create_app
    from app.supervisor import ProcessesRefused, Supervisor, check_processes, listen_shared

    settings = load_settings()
    _setup_logging(settings)
    bind = host or settings.host
    if not settings.api_keys and not _is_loopback(bind):
        log.warning(
            "binding %s without STEPWISE_API_KEYS: anyone who reaches it can run workflows", bind
        )
    count = processes or settings.processes
    try:
        check_processes(settings, count)
    except ProcessesRefused as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if count > 1 and not shared_port:
        raise typer.Exit(Supervisor(settings, bind, port or settings.port, count).run())
    _claim_sqlite(settings)
    app = create_app(settings)

    class Server(uvicorn.Server):
        """uvicorn drains HTTP connections before the lifespan shutdown; the runners
        must stop claiming, and start giving their runs back, as soon as the signal comes."""

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._stepwise_loop = asyncio.get_running_loop()
            await super().serve(sockets)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # the lifespan (the runtime) is up
            settle_heap()
            if ready_fd is not None and self.started:  # tell the supervisor it serves
                os.write(ready_fd, b"1")
                os.close(ready_fd)

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
        log_config=None,  # its loggers reach the root handler (plain text or JSON lines)
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    sockets = [listen_shared(bind, config.port)] if shared_port else None
    Server(config).run(sockets)


def settle_heap() -> int:
    """Once a server process has started: move every object alive now (the modules, the
    app, its routes, models and caches: most of the heap) out of the garbage collector's
    reach. They live as long as the process, yet each full collection walked them all
    again, about a fifth of the server's CPU per durable step under load. Returns how
    many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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

    settings = load_settings()
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
        frozen = settle_heap()
        log.info("worker ready (%d startup objects kept out of the collector)", frozen)
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
    from alembic.util.exc import CommandError

    from app.store.database import migrate as run_migrations

    settings = load_settings()
    _setup_logging(settings)
    try:
        asyncio.run(run_migrations(settings.database_url, revision, down=down))
    except CommandError as exc:  # an unknown revision, or one the other way
        console.print(f"[red]migrate: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]database at {'revision ' + revision if down else 'head'}[/green]")


# -- retention ---------------------------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``."""
    match = _AGE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter("a positive age with a unit: 30d, 12h, 2w, 90m or 45s")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


@cli.command()
def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="delete runs that ended longer ago than this (30d, 12h, 2w); "
            "default: the configured retention (STEPWISE_RETENTION_DAYS, retention_days)",
        ),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option(help="only runs of this workflow (with --older-than)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would go")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Delete ended runs with their checkpoints and events (straight from the database).

    Only completed, failed and cancelled runs go; paused and running runs stay. Uses
    STEPWISE_DATABASE_URL.
    """
    from app.engine.retention import PruneReport, policy_rules
    from app.engine.retention import prune as prune_runs
    from app.store.database import create_engine, create_sessionmaker
    from app.store.models import utcnow
    from app.store.retention import age_rule

    age = parse_age(older_than) if older_than is not None else None
    if workflow is not None and age is None:
        raise typer.BadParameter("--workflow goes with --older-than", param_hint="--workflow")
    settings = load_settings()

    async def run() -> PruneReport:
        engine = create_engine(settings)
        sessions = create_sessionmaker(engine)
        try:
            if age is not None:
                rules = [age_rule(utcnow() - age, workflow)]
            else:
                rules = await policy_rules(sessions, settings.retention_days)
            return await prune_runs(
                sessions,
                rules,
                batch_runs=settings.retention_batch_runs,
                batch_rows=settings.retention_batch_rows,
                dry_run=dry_run,
            )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    except (OSError, DBAPIError) as exc:
        console.print(f"[red]error:[/red] database: {str(exc).splitlines()[0]}")
        raise typer.Exit(1) from None
    if as_json:
        fields = ("runs", "checkpoints", "events", "dry_run", "busy", "rules")
        summary = {name: getattr(report, name) for name in fields}
        report_out.print_json(json.dumps({**summary, "transactions": len(report.transactions)}))
        return
    if not report.rules:
        report_out.print(
            "no retention configured (STEPWISE_RETENTION_DAYS, retention_days): nothing to prune"
        )
        return
    verb = "would delete" if dry_run else "deleted"
    report_out.print(
        f"{verb} {report.runs} run(s), {report.checkpoints} checkpoint(s), "
        f"{report.events} event(s) ({'; '.join(report.rules)})"
    )
    if report.busy:
        report_out.print("another process is pruning right now; it does the rest")


register_run_verbs(cli)
register_workflow_verbs(cli)


def main() -> None:
    cli()

"""The ``stepwise`` client verbs as people use them: real processes against a live
server, against a closed port, and at a (pseudo) terminal that answers a prompt."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.test_client import APPROVAL, CHAT, SLOW
from tests.conftest import free_port, store

FAILING = {
    "name": "failing",
    "nodes": {"boom": {"step": "fail", "with": {"code": "nope", "message": "it broke"}}},
}


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPWISE_")}
    env.update(extra)
    return env


async def cli(*args: str, stdin: bytes | None = None, **env: str) -> tuple[int, str, str]:
    """``python -m app ARGS`` in a real process: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(**env),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin or b""), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_every_client_verb_against_no_server_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    definition = tmp_path / "w.json"
    definition.write_text(json.dumps(APPROVAL))
    verbs = [
        ["runs"],
        ["status", "r1"],
        ["status", "r1", "--json"],
        ["events", "r1"],
        ["events", "r1", "--follow"],
        ["run", "approval"],
        ["run", "approval", "--follow"],
        ["resume", "r1"],
        ["fork", "r1"],
        ["cancel", "r1"],
        ["respond", "r1"],
        ["message", "r1", "hi"],
        ["workflows"],
        ["workflow", "approval"],
        ["apply", str(definition)],
    ]
    results = await asyncio.gather(*(cli(*verb, "--server", url) for verb in verbs))
    for verb, (code, out, err) in zip(verbs, results, strict=True):
        assert code == 1, (verb, out, err)
        assert out == "", (verb, out)
        assert err == f"cannot reach {url}: connection refused\n", (verb, err)
    # STEPWISE_URL is the default server, as for the client
    code, _, err = await cli("runs", STEPWISE_URL=url)
    assert (code, err) == (1, f"cannot reach {url}: connection refused\n")
    # a server URL that does not parse, and a migration to no such revision
    code, _, err = await cli("runs", "--server", "http://[::1")
    assert code == 1 and err.count("\n") == 1 and "--server 'http://[::1'" in err, err
    db = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err = await cli("migrate", "nosuchrev", "--down", STEPWISE_DATABASE_URL=db)
    assert code == 1 and "Traceback" not in out + err and "nosuchrev" in out + err, (out, err)


async def test_server_errors_are_one_line_with_code_and_detail(live_server: str) -> None:
    code, out, err = await cli("status", "no-such-run", "--server", live_server)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "run_not_found" in err and "no-such-run" in err
    code, _, err = await cli("run", "no-such-workflow", "--server", live_server)
    assert code == 1 and err.count("\n") == 1 and "no-such-workflow" in err
    code, _, err = await cli("run", "x", "--inputs", "{not json", "--server", live_server)
    assert code == 1 and err.count("\n") == 1 and "--inputs is not valid JSON" in err


async def test_status_says_how_to_answer_and_that_command_works(live_server: str) -> None:
    async with httpx.AsyncClient(base_url=live_server) as http:
        await store(http, APPROVAL)
    code, out, _ = await cli("run", "approval", "--inputs", '{"n": 4}', "--server", live_server)
    assert code == 0 and "interrupted" in out
    run_id = re.search(r"run ([0-9a-f-]{36})", out)
    assert run_id is not None
    code, out, err = await cli("status", run_id.group(1), "--server", live_server)
    assert code == 0, err
    assert "interrupted" in out and "node:     ask" in out and '"question": "ok?"' in out
    answer = re.search(r"answer:\s+(stepwise respond .+?)\s{3}\(or:", out)
    assert answer is not None, out
    words = shlex.split(answer.group(1))
    assert words[:3] == ["stepwise", "respond", run_id.group(1)]
    code, out, err = await cli(*words[1:], "--follow")
    assert code == 0, err
    assert "✔ completed" in out and '"approved": true' in out
    code, out, _ = await cli("status", run_id.group(1), "--json", "--server", live_server)
    resource = json.loads(out)
    assert resource["status"] == "completed" and resource["id"] == run_id.group(1)
    code, out, _ = await cli("runs", "--status", "completed", "--json", "--server", live_server)
    assert [run["id"] for run in json.loads(out)["items"]] == [run_id.group(1)]
    code, out, _ = await cli("runs", "--server", live_server)
    assert run_id.group(1) in out and "completed" in out


async def test_follow_shows_progress_and_the_exit_status_says_how_it_ended(
    live_server: str,
) -> None:
    async with httpx.AsyncClient(base_url=live_server) as http:
        for definition in (APPROVAL, SLOW, FAILING):
            await store(http, definition)
    code, out, err = await cli("run", "slow", "--follow", "--server", live_server)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[-1] for line in lines if "✓" in line] == [
        "one",
        "pause1",
        "two",
        "pause2",
        "three",
    ]
    assert "✔ completed" in out and "output: " in out
    code, out, _ = await cli("run", "failing", "--follow", "--server", live_server)
    assert code == 1 and "nope" in out and "it broke" in out
    # not at a terminal: it stops at the pause and says how to answer
    code, out, _ = await cli(
        "run", "approval", "--inputs", '{"n": 1}', "--follow", "--server", live_server
    )
    assert code == 0 and "⏸ interrupted at ask" in out and "answer with: stepwise respond" in out
    code, out, err = await cli("run", "slow", "--follow", "--json", "--server", live_server)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.completed"


async def test_events_resume_fork_cancel_message(live_server: str) -> None:
    async with httpx.AsyncClient(base_url=live_server) as http:
        for definition in (APPROVAL, CHAT, SLOW):
            await store(http, definition)
        started = (await http.post("/runs", json={"workflow": "slow"})).json()
    code, out, _ = await cli("events", started["id"], "--follow", "--server", live_server)
    assert code == 0 and out.strip().endswith("✔ completed")
    code, out, _ = await cli("events", started["id"], "--json", "--server", live_server)
    assert json.loads(out.splitlines()[-1])["type"] == "run.completed"

    code, out, _ = await cli("run", "chat", "--json", "--server", live_server)
    chat = json.loads(out)
    assert chat["status"] == "awaiting_input"
    code, out, _ = await cli(
        "message", chat["id"], "hello there", "--follow", "--server", live_server
    )
    assert code == 0 and "✔ completed" in out

    code, out, _ = await cli(
        "run", "approval", "--inputs", '{"n": 1}', "--json", "--server", live_server
    )
    paused = json.loads(out)
    # a verb that follows the run it set going exits 1 when that run fails
    rejected = json.loads(
        (await cli("run", "approval", "--inputs", '{"n": 2}', "--json", "--server", live_server))[1]
    )
    code, out, _ = await cli(
        "respond", rejected["id"], "--reject", "--follow", "--server", live_server
    )
    assert code == 1 and "interrupt_rejected" in out
    code, out, _ = await cli(
        "fork", paused["id"], "--state-patch", '{"n": 9}', "--json", "--server", live_server
    )
    fork = json.loads(out)
    assert code == 0 and fork["parent_run_id"] == paused["id"]
    code, out, _ = await cli("cancel", fork["id"], "--server", live_server)
    assert code == 0 and "cancel" in out
    code, out, _ = await cli("respond", paused["id"], "--reject", "--server", live_server)
    assert code == 0
    async with httpx.AsyncClient(base_url=live_server) as http:
        failed = (await http.get(f"/runs/{paused['id']}/wait", params={"timeout_s": 20})).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "interrupt_rejected"
    code, out, err = await cli("status", paused["id"], "--server", live_server)
    assert "interrupt_rejected" in out and f"stepwise resume {paused['id']}" in out
    code, out, err = await cli("respond", paused["id"], "--server", live_server)
    assert code == 1 and err.count("\n") == 1 and "no pending interrupt" in err


@pytest.mark.timeout(90)
async def test_run_follow_at_a_terminal_asks_and_answers(live_server: str) -> None:
    async with httpx.AsyncClient(base_url=live_server) as http:
        await store(http, APPROVAL)
    primary, secondary = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "run",
        "approval",
        "--inputs",
        '{"n": 7}',
        "--follow",
        "--server",
        live_server,
        stdin=secondary,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    os.close(secondary)
    assert process.stdout is not None
    seen = b""
    while b"answer (" not in seen:
        chunk = await asyncio.wait_for(process.stdout.read(4096), 30)
        assert chunk, seen.decode()
        seen += chunk
    assert b"ok?" in seen
    os.write(primary, b'{"approved": true}\n')
    rest, err = await asyncio.wait_for(process.communicate(), 30)
    os.close(primary)
    out = (seen + rest).decode()
    assert process.returncode == 0, (out, err.decode())
    assert "✔ completed" in out and '"approved": true' in out


def test_tokens_print_as_they_arrive() -> None:
    """``message.delta`` text goes out inline, and the next event starts a new line."""
    from io import StringIO

    from rich.console import Console

    from app.terminal.live import LiveView
    from stepwise.models import Event

    buffer = StringIO()
    view = LiveView(Console(file=buffer, width=200, color_system=None))

    def event(seq: int, kind: str, data: dict[str, Any]) -> Event:
        return Event.model_validate(
            {
                "run_id": "r",
                "seq": seq,
                "type": kind,
                "node": "chat",
                "ts": "2026-12-04T10:00:00Z",
                "data": data,
            }
        )

    view.show(event(1, "node.started", {}))
    view.show(event(2, "message.delta", {"node": "chat", "text": "Hel"}))
    view.show(event(3, "message.delta", {"node": "chat", "text": "lo!"}))
    view.show(event(4, "node.completed", {}))
    lines = buffer.getvalue().splitlines()
    assert lines[1] == "Hello!"
    assert "✓ chat" in lines[2]


async def test_prune_by_hand(live_server: str, database_url: str) -> None:
    from tests.engine.test_retention_sweep import backdate

    async with httpx.AsyncClient(base_url=live_server) as http:
        await store(http, {"name": "quick", "nodes": {"a": {"step": "set"}}})
        await store(http, APPROVAL)
        done = (
            await http.post("/runs/wait", json={"workflow": "quick"}, params={"timeout_s": 20})
        ).json()
        paused = (
            await http.post("/runs/wait", json={"workflow": "approval", "inputs": {"n": 1}})
        ).json()
        assert (done["status"], paused["status"]) == ("completed", "interrupted")
        await backdate(database_url, done["id"], paused["id"], days=40)
        env = {"STEPWISE_DATABASE_URL": database_url}
        code, out, err = await cli("prune", "--older-than", "30d", "--dry-run", **env)
        assert code == 0, err
        assert out.startswith("would delete 1 run(s), ")
        assert (await http.get(f"/runs/{done['id']}")).status_code == 200
        code, out, _ = await cli("prune", "--older-than", "30d", "--workflow", "approval", **env)
        assert out.startswith("deleted 0 run(s)")
        code, out, _ = await cli("prune", "--older-than", "30d", "--json", **env)
        report = json.loads(out)
        assert report["runs"] == 1 and report["events"] > 0 and not report["dry_run"]
        assert (await http.get(f"/runs/{done['id']}")).status_code == 404
        assert (await http.get(f"/runs/{paused['id']}")).status_code == 200
        code, out, _ = await cli("prune", **env)
        assert code == 0 and "nothing to prune" in out
        code, _, err = await cli("prune", "--older-than", "soon", **env)
        assert code == 2 and "30d" in err


async def test_apply_shows_the_warnings_of_what_it_stored(live_server: str) -> None:
    """A workflow naming a prompt not stored yet is stored, with a warning said aloud."""
    example = Path(__file__).resolve().parents[2] / "examples" / "workflows" / "agent-triage.yaml"
    code, out, err = await cli("apply", str(example), "--server", live_server)
    assert code == 0, err
    assert out.startswith("stored agent-triage v")
    assert "warning: " in err and "prompt" in err, err

"""What every run command shares: the locked read of the run, and how a change that
makes a run runnable reaches a runner after the commit.

A run queued through this process (started, answered) is *reserved* for its runner pool
in the same transaction (``run_store.reservation``) and handed over with what the
transaction read (``memory.Handover``), so it starts without a claim or a read-back;
otherwise the claim loops of all processes are woken.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import memory
from app.engine.lifecycle import PAUSED, TERMINAL, RunStatus
from app.engine.services import Engine
from app.engine.subgraphs import SubgraphFrames
from app.errors import Invalid, NotFound, error_item
from app.store import checkpoints as checkpoint_store
from app.store import runs as run_store
from app.store.database import encode_json
from app.store.models import Checkpoint, Run, utcnow
from app.store.progress import record_step, take_written
from app.store.statements import Unchanged

Loaded = tuple[Checkpoint, memory.Doc, checkpoint_store.CheckpointChain]


async def load_doc(session: AsyncSession, run: Run, checkpoint_id: str | None = None) -> Loaded:
    """A checkpoint of the run (its head by default), its full document and the chain to
    write deltas against; 404 if the run has no such checkpoint."""
    cid = checkpoint_id or run.head_checkpoint_id
    loaded = await checkpoint_store.load(session, cid) if cid else None
    if loaded is None or loaded[0].run_id != run.id:
        raise NotFound(
            f"checkpoint {checkpoint_id!r} not found in run {run.id}", code="checkpoint_not_found"
        )
    return loaded


class CommandBase:
    """The helpers every group of run commands uses."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _reservation(self, token: int) -> dict[str, Any]:
        """Lease columns that queue a run for this process's runners (see
        ``run_store.reservation``), when they can take it now; else none. ``token``: the
        lease token (a new run's is 1; else the locked row's plus one)."""
        if not self._can_reserve():
            return {}
        owner = self.engine.runner_owner
        assert owner is not None
        return run_store.reservation(owner, utcnow(), self.engine.settings.lease_s, token)

    def _can_reserve(self) -> bool:
        """Whether this process's runners can take a run queued for them now."""
        return self.engine.runner_owner is not None and self.engine.can_adopt()

    def _check_state_size(self, state: Any, loc: list[str | int], what: str) -> None:
        """422 ``state_too_large`` for a state over ``STEPWISE_MAX_STATE_BYTES`` (the limit a
        step's write is held to, as the run's ``state_too_large`` failure)."""
        limit = self.engine.settings.max_state_bytes
        size = len(encode_json(state))
        if size > limit:
            msg = f"{what} would be {size} bytes; the limit is {limit} (STEPWISE_MAX_STATE_BYTES)"
            raise Invalid(msg, code="state_too_large", errors=[error_item(loc, msg)])

    def _reserved(self, run: Run) -> bool:
        return run.lease_owner is not None and run.lease_owner == self.engine.runner_owner

    async def _hand_over(
        self,
        session: AsyncSession,
        run: Run,
        loaded: Loaded | None = None,
    ) -> memory.Handover | None:
        """What this process's runner needs of a run queued for it (None if it was not)."""
        if not self._reserved(run):
            return None
        checkpoint, doc, chain = loaded or await load_doc(session, run)
        definitions = await SubgraphFrames.definitions_of(self.engine, session, run, doc)
        return memory.Handover(run, checkpoint.id, doc, definitions, chain, checkpoint.status)

    def _after_commit(
        self, run: Run, *, work: bool = False, handover: memory.Handover | None = None
    ) -> None:
        self.engine.on_events(run.id, run.event_seq, run.status)
        reserved = self._reserved(run)
        if work and not (
            run.status == RunStatus.QUEUED
            and run.due_at is None
            and self.engine.adopt(
                run.id, handover if reserved else None, run.lease_token if reserved else None
            )
        ):
            self.engine.on_work()
        if run.webhook and (run.status in TERMINAL or run.status in PAUSED):
            self.engine.on_settled()

    async def _locked(self, session: AsyncSession, run_id: str) -> Run:
        run = await run_store.get(session, run_id, lock=True)
        if run is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
        return run

    async def _leave_answer(
        self, session: AsyncSession, run: Run, answer: dict[str, Any], **values: Any
    ) -> Run:
        """Leave an answer to a paused branch of a running (or queued) run in its row, for
        the execution that holds the run (told at once, on this process or another); a
        later execution takes it after a crash (``app.engine.branchanswers``)."""
        answers = [*(run.answers or []), {"id": str(uuid.uuid4()), **answer}]
        recorded = await record_step(
            session,
            run.id,
            guard=Unchanged(run.status),
            values={"answers": answers, **values},
            events=[],
            whole_row=True,
        )
        await run_store.notify(session, "stepwise_control", f"answer:{run.id}")
        return take_written(run, recorded)

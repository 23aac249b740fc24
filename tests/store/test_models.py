"""``detached``: a model instance built as a loaded row would be, for read-only copies."""

from __future__ import annotations

from sqlalchemy import inspect

from app.store.models import Run, detached


def test_a_detached_run_reads_as_one_built_by_the_constructor() -> None:
    values = {"id": "r1", "workflow_name": "w", "status": "queued", "inputs": {"a": [1]}}
    fast, slow = detached(Run, values), Run(**values)
    for key in (*values, "error", "step_count", "lease_owner"):
        assert getattr(fast, key) == getattr(slow, key), key
    state = inspect(fast)
    assert state.transient  # in no session
    assert not any(state.attrs[key].history.has_changes() for key in values)  # nothing to flush

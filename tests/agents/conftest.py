"""Fixtures of the agent tests: a scripted fake model server per provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agents.fake_models import FakeModel


@pytest.fixture(params=["openai", "anthropic"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeModel]:
    server = FakeModel(request.param).start()
    yield server
    server.stop()

"""Settings: STEPWISE_ environment variables, validated at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings, normalize_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert Settings(database_url=given).database_url == expected


@pytest.mark.parametrize("bad", ["mysql://h/db", "postgresql+psycopg://h/db", "x.db", ""])
def test_unknown_database_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings(database_url=bad)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPWISE_DATABASE_URL", "postgresql://pg/stepwise")
    monkeypatch.setenv("STEPWISE_API_KEYS", " k1, k2 ,,")
    monkeypatch.setenv("STEPWISE_HTTP_ALLOWED_HOSTS", "a.example,10.0.0.1")
    monkeypatch.setenv("STEPWISE_WORKERS", "3")
    monkeypatch.setenv("STEPWISE_MIGRATE_ON_START", "false")
    monkeypatch.setenv("STEPWISE_MAX_BODY_BYTES", "1024")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://pg/stepwise"
    assert not settings.is_sqlite
    assert settings.api_keys == ["k1", "k2"]
    assert settings.http_allowed_hosts == ["a.example", "10.0.0.1"]
    assert settings.workers == 3
    assert settings.migrate_on_start is False
    assert settings.max_body_bytes == 1024


def test_defaults_follow_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEPWISE_API_KEYS", "STEPWISE_DATABASE_URL", "STEPWISE_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.is_sqlite
    assert settings.api_keys == []
    assert settings.max_body_bytes == 10 << 20
    assert settings.max_json_depth == 64
    assert settings.max_definition_bytes == 1 << 20
    assert settings.max_nodes == 1000
    assert settings.max_state_bytes == 16 << 20
    assert settings.max_steps == 10_000
    assert settings.template_max_output_bytes == 1 << 20
    assert settings.template_timeout_s == 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_body_bytes", 0), ("max_json_depth", -1), ("workers", -1), ("lease_s", 0)],
)
def test_limits_are_validated(name: str, value: int) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_log_level_is_validated() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="chatty")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("STEPWISE_LEASE_S", "inf", "finite number"),
        ("STEPWISE_LEASE_S", "1e12", "less than or equal to 31536000"),
        ("STEPWISE_SHUTDOWN_GRACE_S", "inf", "finite number"),
        ("STEPWISE_SWEEP_INTERVAL_S", "nan", "finite number"),
        ("STEPWISE_PORT", "70000", "less than or equal to 65535"),
        ("STEPWISE_PORT", "0", "greater than or equal to 1"),
    ],
)
def test_values_that_cannot_work_stop_the_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    """A lease of inf seconds has no end time and a port above 65535 wraps around: they
    are refused before anything starts, in a line naming the variable (no traceback)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2, result.output
    assert f"error: {variable}: " in result.output and says in result.output
    assert "Traceback" not in result.output

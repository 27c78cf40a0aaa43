"""Migrations upgrade and downgrade cleanly, from the CLI and from `alembic` in the repo."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from relay.db import migrate

ROOT = Path(__file__).resolve().parents[3]
OBJECTS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname LIKE 'meter_event_outbox%'
UNION ALL
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND p.proname LIKE '%outbox%'
ORDER BY 1
"""


def objects(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute(OBJECTS)]


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    assert objects(empty_database_url) == []
    migrate.upgrade(empty_database_url)
    created = objects(empty_database_url)
    assert {"meter_event_outbox", "meter_event_outbox_due", "outbox_record_usage"} <= set(created)
    assert migrate.current(empty_database_url) == migrate.revisions()[0]
    migrate.upgrade(empty_database_url)  # idempotent
    migrate.downgrade(empty_database_url, "base")
    assert objects(empty_database_url) == []
    assert migrate.current(empty_database_url) is None
    migrate.upgrade(empty_database_url)
    assert objects(empty_database_url) == created


def test_cli_and_alembic_command_accept_both_url_forms(empty_database_url: str) -> None:
    env = {**os.environ, "OUTBOX_DATABASE_URL": empty_database_url}
    cli = [sys.executable, "-m", "relay.cli"]
    out = subprocess.run([*cli, "migrate"], env=env, capture_output=True, text=True, check=True)
    assert f"schema at {migrate.revisions()[0]}" in out.stdout
    driver_url = empty_database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    alembic = [sys.executable, "-m", "alembic", "downgrade", "base"]
    env["OUTBOX_DATABASE_URL"] = driver_url
    subprocess.run(alembic, env=env, cwd=ROOT, check=True, capture_output=True)
    assert objects(empty_database_url) == []
    subprocess.run([*alembic[:3], "upgrade", "head"], env=env, cwd=ROOT, check=True)
    assert "meter_event_outbox" in objects(empty_database_url)


def test_cli_refuses_without_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_DATABASE_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", "migrate"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "OUTBOX_DATABASE_URL" in out.stderr

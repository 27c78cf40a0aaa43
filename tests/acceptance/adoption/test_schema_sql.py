"""Recipe (d) and offline mode: the SQL printed by `outbox-relay schema --sql`, `outbox-relay
migrate --sql` and `alembic upgrade head --sql` builds the same schema as `migrate` itself."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from relay import daemon
from tests.support.adoption import CLI, HEAD, catalog, run

ROOT = Path(__file__).resolve().parents[3]


def apply(url: str, sql: str) -> None:
    """Run a script the way psql -f would (one execute, no parameters, autocommit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def offline(args: list[str], cwd: Path | None = None) -> str:
    """An offline command: no database configured at all."""
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_DATABASE_URL"}
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_recipe_d_schema_sql_builds_the_same_schema_as_migrate(
    database_url: str, empty_database_url: str
) -> None:
    sql = offline([*CLI, "schema", "--sql"])
    # The other tool owns the transaction.
    assert not re.search(r"^(BEGIN|COMMIT);$", sql, re.MULTILINE)
    apply(empty_database_url, sql)
    assert catalog(empty_database_url) == catalog(database_url)
    daemon.check_schema(empty_database_url)  # `run` accepts it


def test_schema_sql_in_steps_equals_the_whole(database_url: str, empty_database_url: str) -> None:
    """A tool that applied an older release's DDL takes only the new step (--from)."""
    apply(empty_database_url, offline([*CLI, "schema", "--sql", "--revision", "outbox_0002"]))
    apply(empty_database_url, offline([*CLI, "schema", "--sql", "--from", "outbox_0002"]))
    assert catalog(empty_database_url) == catalog(database_url)


def test_migrate_sql_and_alembic_sql_work_offline(
    database_url: str, empty_database_url: str, pg_admin_url: str
) -> None:
    cli_sql = offline([*CLI, "migrate", "--sql"])
    alembic_sql = offline([sys.executable, "-m", "alembic", "upgrade", "head", "--sql"], ROOT)
    assert cli_sql == alembic_sql and cli_sql.startswith("BEGIN;")
    apply(empty_database_url, cli_sql)
    assert catalog(empty_database_url) == catalog(database_url)
    assert f"schema at {HEAD}" in run([*CLI, "migrate"], empty_database_url).stdout

"""Recipes (a) and (b): an application with its own alembic history in the same database.

(a) `outbox-relay migrate` beside the app's `alembic upgrade head`: two version tables, neither
    sees the other's revisions, in either order.
(b) the outbox migrations inside the app's history (version_locations + the "outbox" branch):
    one `alembic upgrade heads` migrates both, and `run` finds the outbox's revision there.
"""

import sys
from pathlib import Path

import psycopg
import pytest

from relay import daemon
from relay.db import migrate
from tests.support.adoption import CLI, HEAD, run, versions

APP_ENV = """
import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["OUTBOX_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

APP_REVISION = '''
"""The application's own first revision."""
from alembic import op

revision = "a1b2c3"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE app_orders (id bigint PRIMARY KEY)")


def downgrade():
    op.execute("DROP TABLE app_orders")
'''


def app_project(root: Path, include_outbox: bool) -> Path:
    """A fresh application alembic project (alembic.ini, env.py, one revision)."""
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(APP_ENV)
    (root / "script.py.mako").write_text("")
    (root / "versions" / "a1b2c3_orders.py").write_text(APP_REVISION)
    locations = str(root / "versions")
    if include_outbox:  # recipe (b): the outbox's versions directory as a second location
        locations += f" {Path(migrate.script_location()) / 'versions'}"
    ini = root / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {root}\nversion_locations = {locations}\n"
        "path_separator = space\n"
    )
    return ini


def app_alembic(ini: Path, url: str, *args: str) -> str:
    return run([sys.executable, "-m", "alembic", "-c", str(ini), *args], url).stdout


@pytest.mark.parametrize("app_first", [True, False], ids=["app_first", "outbox_first"])
def test_recipe_a_outbox_migrate_beside_app_alembic(
    empty_database_url: str, tmp_path: Path, app_first: bool
) -> None:
    url = empty_database_url
    ini = app_project(tmp_path / "app", include_outbox=False)
    steps = [
        lambda: app_alembic(ini, url, "upgrade", "head"),
        lambda: run([*CLI, "migrate"], url),
    ]
    for step in steps if app_first else reversed(steps):
        step()
    assert versions(url, "alembic_version") == ["a1b2c3"]
    assert versions(url, "outbox_alembic_version") == [HEAD]
    # Each side again (idempotent), and each reads only its own revision.
    assert f"schema at {HEAD}" in run([*CLI, "migrate"], url).stdout
    app_alembic(ini, url, "upgrade", "head")
    assert "a1b2c3 (head)" in app_alembic(ini, url, "current")
    daemon.check_schema(url)


def test_run_never_reads_the_app_revision_as_the_outbox_schema(empty_database_url: str) -> None:
    """Only the app's alembic ran: `run` must say the outbox schema is missing, not start."""
    url = empty_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('a1b2c3')")
    with pytest.raises(daemon.SchemaBehind, match="schema is at nothing"):
        daemon.check_schema(url)


def test_recipe_b_outbox_branch_inside_the_app_alembic_history(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    ini = app_project(tmp_path / "app", include_outbox=True)
    app_alembic(ini, url, "upgrade", "heads")
    assert versions(url, "alembic_version") == ["a1b2c3", HEAD]
    assert versions(url, "outbox_alembic_version") is None
    assert migrate.current(url) == HEAD
    daemon.check_schema(url)
    # The branch label addresses the outbox alone, e.g. to take it down and up again.
    app_alembic(ini, url, "downgrade", "outbox@base")
    assert versions(url, "alembic_version") == ["a1b2c3"]
    with pytest.raises(daemon.SchemaBehind):
        daemon.check_schema(url)
    app_alembic(ini, url, "upgrade", "outbox@head")
    assert versions(url, "alembic_version") == ["a1b2c3", HEAD]

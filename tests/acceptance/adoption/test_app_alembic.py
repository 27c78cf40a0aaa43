"""Recipes (a) and (b): an application with its own alembic history in the same database.

(a) `outbox-relay migrate` beside the app's `alembic upgrade head`: two version tables, neither
    sees the other's revisions, in either order.
(b) the outbox migrations inside the app's history (version_locations + the "outbox" branch):
    one `alembic upgrade heads` migrates both, and `run` finds the outbox's revision there.
With (a), the app's `alembic revision --autogenerate` proposes nothing for the outbox's tables
once env.py passes outbox.alembic's hooks.
"""

import re
import sys
from pathlib import Path

import psycopg
import pytest

from outbox.alembic import is_outbox_table
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


# The app's env.py with models and the outbox's hooks, for autogenerate.
AUTOGENERATE_ENV = """
import os
from alembic import context
from sqlalchemy import BigInteger, Column, MetaData, Table, create_engine, pool
{hooks_import}

metadata = MetaData()
Table("app_orders", metadata, Column("id", BigInteger, primary_key=True, autoincrement=False))

url = os.environ["OUTBOX_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata{hooks})
    with context.begin_transaction():
        context.run_migrations()
"""

HOOKS = {
    "include_object": ", include_object=include_object",
    "include_name": ", include_name=include_name",
    "none": "",
}


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


@pytest.mark.parametrize("hook", ["include_object", "include_name", "none"])
def test_recipe_a_autogenerate_leaves_the_outbox_alone(
    empty_database_url: str, tmp_path: Path, hook: str
) -> None:
    url = empty_database_url
    root = tmp_path / "app"
    ini = app_project(root, include_outbox=False)
    app_alembic(ini, url, "upgrade", "head")
    run([*CLI, "migrate"], url)
    imports = "" if hook == "none" else f"from outbox.alembic import {hook}"
    (root / "env.py").write_text(AUTOGENERATE_ENV.format(hooks_import=imports, hooks=HOOKS[hook]))
    (root / "script.py.mako").write_text(
        (Path(migrate.script_location()) / "script.py.mako").read_text()
    )
    app_alembic(ini, url, "revision", "--autogenerate", "-m", "models", "--rev-id", "b2c3d4")
    generated = (root / "versions" / "b2c3d4_models.py").read_text()
    upgrade = re.search(r"def upgrade\(\) -> None:\n(.*?)\n\n", generated, re.S)
    assert upgrade is not None
    if hook == "none":  # what the hooks are for: without them, the outbox would be dropped
        assert "op.drop_table('meter_event_outbox')" in upgrade.group(1)
        assert "op.drop_table('outbox_alembic_version')" in upgrade.group(1)
    else:
        lines = [line.strip() for line in upgrade.group(1).splitlines()]
        statements = [line for line in lines if not line.startswith("#")]
        assert statements == ["pass"], generated


def test_every_outbox_table_is_matched_by_name(database_url: str) -> None:
    """A table a later migration adds is covered only if its name carries an outbox prefix."""
    with psycopg.connect(database_url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind IN ('r', 'v', 'm', 'p', 'f')"
            )
        ]
    assert "meter_event_outbox" in tables and "outbox_alembic_version" in tables
    assert [name for name in tables if not is_outbox_table(name)] == []

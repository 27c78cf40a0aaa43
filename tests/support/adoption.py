"""What the adoption tests compare: the outbox schema as the catalog describes it."""

import os
import subprocess
import sys

import psycopg

from relay.db import migrate

CLI = [sys.executable, "-m", "relay.cli"]
HEAD = migrate.revisions()[0]  # the revision `migrate` brings a database to

# Every outbox object with its definition; two databases migrated two ways must agree on all.
CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'function', pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger', pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'view', viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
UNION ALL
SELECT 'comment', objoid::regclass || ' ' || description FROM pg_description
WHERE classoid = 'pg_class'::regclass AND objsubid = 0
UNION ALL
SELECT 'version', version_num FROM outbox_alembic_version
ORDER BY 1, 2
"""


def catalog(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(kind, text) for kind, text in conn.execute(CATALOG)]


def versions(url: str, table: str) -> list[str] | None:
    """The rows of an alembic version table, or None when the table does not exist."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
            return None
        return sorted(r[0] for r in conn.execute(f"SELECT version_num FROM {table}"))


def run(args: list[str], url: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command with OUTBOX_DATABASE_URL set; fails the test on a non-zero exit."""
    env = {**os.environ, "OUTBOX_DATABASE_URL": url}
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out

"""Least privilege: `outbox-relay roles` gives the writer, the relay and the reader what their
job needs and nothing more, on every table the migrations create. Each role x operation below
is run for real as a login in that role, against a migrated database; the matrix is the
assertion (allowed / refused)."""

import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import psycopg
import pytest

import outbox
from relay.db import roles
from relay.emulator import Emulator, EmulatorConfig
from tests.pg import admin_execute, unique_name
from tests.support.relay import accepted, make_settings, running_relay

CLI = [sys.executable, "-m", "relay.cli"]
PREFIXES = ("meter_event_outbox", "outbox_")
FORGE = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, accepted_at)"
    " VALUES ('forged', 'api_calls', 'cus_1', 1, 'accepted', now())"
)

# (role, operation) -> allowed. Each operation is a SQL statement, a library call or a command.
MATRIX = {
    ("writer", "record_usage() of the library"): True,
    ("writer", "SELECT outbox_record_usage(...)"): True,
    ("writer", "INSERT a row with state accepted"): False,
    ("writer", "UPDATE state"): False,
    ("writer", "DELETE rows"): False,
    ("writer", "SELECT metadata of other rows"): False,
    ("writer", "SELECT attempts"): False,
    ("writer", "INSERT a tally delta"): False,
    ("relay", "outbox-relay run: rows accepted"): True,
    ("relay", "outbox-relay status"): True,
    ("relay", "outbox-relay prune --yes"): True,
    ("relay", "tend the created_at ranges (owner's rights)"): True,
    ("writer", "tend the created_at ranges (owner's rights)"): False,
    ("reader", "tend the created_at ranges (owner's rights)"): False,
    ("relay", "CREATE TABLE"): False,
    ("relay", "ALTER TABLE meter_event_outbox"): False,
    ("relay", "DROP TABLE meter_event_outbox"): False,
    ("relay", "TRUNCATE meter_event_outbox"): False,
    ("relay", "UPDATE outbox_alembic_version"): False,
    ("relay", "SELECT outbox_record_usage(...)"): False,
    ("reader", "outbox-relay status"): True,
    ("reader", "outbox-relay list"): True,
    ("reader", "outbox-relay inspect"): True,
    ("reader", "console sign-in (outbox_console_sessions)"): True,
    ("reader", "UPDATE state"): False,
    ("reader", "UPDATE the tallies"): False,
    ("reader", "INSERT a row with state accepted"): False,
    ("reader", "SELECT outbox_record_usage(...)"): False,
    ("reader", "outbox-relay retry --all"): False,
}

SQL = {
    "SELECT outbox_record_usage(...)": (
        "SELECT outbox_record_usage('api_calls', 'cus_1', 1, 'fn-1')"
    ),
    "INSERT a row with state accepted": FORGE,
    "UPDATE state": "UPDATE meter_event_outbox SET state = 'accepted' RETURNING id",
    "DELETE rows": "DELETE FROM meter_event_outbox RETURNING id",
    "SELECT metadata of other rows": "SELECT metadata FROM meter_event_outbox",
    "SELECT attempts": "SELECT * FROM meter_event_outbox_attempts",
    "INSERT a tally delta": (
        "INSERT INTO meter_event_outbox_tally_deltas (state, code, stripe_account, customer,"
        " delta) VALUES ('accepted', '', '', '', 1000)"
    ),
    "UPDATE the tallies": "UPDATE meter_event_outbox_tallies SET n = n + 1000 RETURNING n",
    "CREATE TABLE": "CREATE TABLE evil (id int)",
    "ALTER TABLE meter_event_outbox": "ALTER TABLE meter_event_outbox ADD COLUMN evil int",
    "DROP TABLE meter_event_outbox": "DROP TABLE meter_event_outbox",
    "TRUNCATE meter_event_outbox": "TRUNCATE meter_event_outbox",
    "UPDATE outbox_alembic_version": "UPDATE outbox_alembic_version SET version_num = 'x'",
    "tend the created_at ranges (owner's rights)": (
        "SELECT meter_event_outbox_summarize_ranges(),"
        " meter_event_outbox_forget_ranges(ARRAY[0::bigint])"
    ),
    "console sign-in (outbox_console_sessions)": (
        "INSERT INTO outbox_console_sessions (id, expires_at) VALUES ('s', now()) RETURNING id"
    ),
}
COMMANDS = {
    "outbox-relay status": ["status"],
    "outbox-relay list": ["list"],
    "outbox-relay inspect": ["inspect", "seed-1"],
    "outbox-relay prune --yes": ["prune", "--yes"],
    "outbox-relay retry --all": ["retry", "--all"],
}


@pytest.fixture
def logins(database_url: str, pg_admin_url: str) -> Iterator[dict[str, str]]:
    """One login per role (cluster-wide names, unique per test), after `outbox-relay roles`."""
    roles.apply(database_url)
    names = {role: unique_name(f"t_{role}") for role in ("writer", "relay", "reader")}
    for role, name in names.items():
        admin_execute(pg_admin_url, f'CREATE ROLE "{name}" LOGIN IN ROLE outbox_{role}')
    yield {role: _as_user(database_url, name) for role, name in names.items()}
    for name in names.values():
        admin_execute(pg_admin_url, f'DROP ROLE IF EXISTS "{name}"')


def _as_user(url: str, user: str) -> str:
    """The URL with `user` and no password, whatever its form (`postgres@host`, or the embedded
    server's `postgres:@/db?host=/socket/dir`)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}")
    )


def _sql_allowed(url: str, statement: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("BEGIN")
            conn.execute(statement)
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False
        finally:
            conn.execute("ROLLBACK")


def _command_allowed(url: str, args: list[str]) -> bool:
    env = {"OUTBOX_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    ran = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    if ran.returncode in (0, 3) and "permission denied" not in ran.stderr:
        return True
    assert "permission denied" in ran.stderr, ran.stderr  # refused, not broken another way
    return False


def _library_allowed(url: str) -> bool:
    with psycopg.connect(url) as conn:
        try:
            outbox.record_usage(
                conn, event_name="api_calls", customer="cus_1", value=1, identifier="lib-1"
            )
            outbox.record_usage(  # a replay reads the fact back: needs its columns
                conn, event_name="api_calls", customer="cus_1", value=1, identifier="lib-1"
            )
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False


async def _relay_allowed(url: str) -> bool:
    async with (
        Emulator(EmulatorConfig(rate_limit_test=None)) as emulator,
        running_relay(make_settings(url, emulator)) as relay,
    ):
        await relay.until(lambda: accepted(url, 1))
    return True


def _seed(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 1, 'seed-1')")
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, metadata,"
            " state, attempts, last_error_code, first_attempt_at)"
            " VALUES ('seed-2', 'api_calls', 'cus_2', 1, '{\"secret\": \"x\"}', 'failed', 1,"
            " 'boom', now())"
        )


async def test_role_matrix(database_url: str, logins: dict[str, str]) -> None:
    _seed(database_url)
    found = {}
    last = ("relay", "outbox-relay run: rows accepted")  # it clears the seeded rows first
    for role, operation in [*(k for k in MATRIX if k != last), last]:
        url = logins[role]
        if operation in SQL:
            found[role, operation] = _sql_allowed(url, SQL[operation])
        elif operation in COMMANDS:
            found[role, operation] = _command_allowed(url, COMMANDS[operation])
        elif operation.startswith("record_usage"):
            found[role, operation] = _library_allowed(url)
        else:
            with psycopg.connect(database_url, autocommit=True) as conn:  # only the fresh row
                conn.execute("DELETE FROM meter_event_outbox WHERE identifier LIKE 'seed-%'")
            found[role, operation] = await _relay_allowed(url)
    assert found == MATRIX


def test_the_writer_cannot_forge_a_state_even_through_the_function(
    database_url: str, logins: dict[str, str]
) -> None:
    """SECURITY DEFINER with a pinned search_path: a caller's own table or operator in an
    earlier schema is not used, and the row it makes is pending."""
    with psycopg.connect(logins["writer"], autocommit=True) as conn:
        conn.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 1, 'fn-2')")
    with psycopg.connect(database_url) as conn:
        (state,) = conn.execute(
            "SELECT state FROM meter_event_outbox WHERE identifier = 'fn-2'"
        ).fetchone()
        (definer, config) = conn.execute(
            "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'outbox_record_usage'"
        ).fetchone()
    assert state == "pending" and definer and config == ["search_path=public, pg_temp"]


# Functions a role that may create in the outbox's schema (PostgreSQL 14 and older let every
# role create in `public`) could add there, each a closer match for a call in the body of a
# tending function than the built-in one: they would run with the owner's rights.
LOOKALIKES = {
    "brin_summarize_new_values(text)": "RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$",
    "brin_desummarize_range(text, bigint)": "RETURNS void LANGUAGE sql AS $$ SELECT 0 $$",
    "unnest(bigint[])": "RETURNS SETOF bigint LANGUAGE sql AS $$ SELECT 0::bigint $$",
}


def test_the_range_tending_functions_call_only_the_built_ins(
    database_url: str, logins: dict[str, str]
) -> None:
    """SECURITY DEFINER with the outbox's schema pinned: a lookalike a role could create in
    that very schema is not called by the tending functions (with the owner's rights)."""
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute("GRANT CREATE ON SCHEMA public TO outbox_writer")  # PostgreSQL 14's default
        try:
            with psycopg.connect(logins["writer"], autocommit=True) as conn:
                for signature, body in LOOKALIKES.items():
                    name = signature.split("(")[0]
                    mark = (
                        f"SELECT set_config('lookalike.ran', '{name} as ' || current_user, false)"
                    )
                    body = body.replace("SELECT", mark + "; SELECT", 1)
                    conn.execute(f"CREATE FUNCTION public.{signature} {body}")
            with psycopg.connect(logins["relay"], autocommit=True) as conn:
                conn.execute(
                    "SELECT meter_event_outbox_summarize_ranges(),"
                    " meter_event_outbox_forget_ranges(ARRAY[0::bigint, 200::bigint])"
                )
                (ran,) = conn.execute("SELECT current_setting('lookalike.ran', true)").fetchone()
            assert not ran
        finally:  # the writer's login is dropped after the test: nothing of it may remain
            owner.execute(f"DROP FUNCTION IF EXISTS {', '.join(f'public.{s}' for s in LOOKALIKES)}")
            owner.execute("REVOKE CREATE ON SCHEMA public FROM outbox_writer")


def test_every_table_the_migrations_create_is_covered(
    database_url: str, logins: dict[str, str]
) -> None:
    """Every table of the schema follows the naming rule the grants walk, and each role has
    exactly its rights on it: a table added by a later migration cannot be missed."""
    with psycopg.connect(database_url) as conn:
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind FROM pg_class"
                " WHERE relnamespace = current_schema()::regnamespace"
                " AND relkind IN ('r', 'p', 'v', 'm')"
            ).fetchall()
        )
        tables = list(kinds)

        def may(role: str, table: str, privilege: str) -> bool:
            query = "SELECT has_table_privilege(%s, %s, %s)"
            (answer,) = conn.execute(query, (f"outbox_{role}", table, privilege)).fetchone()
            return bool(answer)

        assert "outbox_console_sessions" in tables and len(tables) >= 9
        for table in tables:
            assert table.startswith(PREFIXES), f"{table}: not covered by the role grants"
            assert may("reader", table, "SELECT") and may("relay", table, "SELECT"), table
            writable = table != "outbox_alembic_version" and kinds[table] in ("r", "p")
            assert may("relay", table, "UPDATE") == writable, table
            assert not may("relay", table, "TRUNCATE") and not may("reader", table, "UPDATE")
            assert may("reader", table, "INSERT") == (table == "outbox_console_sessions"), table
            assert not may("writer", table, "SELECT") and not may("writer", table, "UPDATE")

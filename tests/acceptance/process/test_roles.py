"""Least privilege: `outbox-relay roles` gives the writer, the relay and the reader what their
job needs and nothing more, on every table the migrations create. Each role x operation below
is run for real as a login in that role, against a migrated database; the matrix is the
assertion (allowed / refused)."""

import itertools
import re
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
    ("relay", "outbox-relay recover --yes"): True,
    ("reader", "outbox-relay recover --yes"): False,
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
    "outbox-relay recover --yes": ["recover", "--yes"],
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
    assert state == "pending" and definer and config == ["search_path=pg_catalog, public, pg_temp"]


# A role that may create in the outbox's schema (PostgreSQL 14 and older let every role create
# in `public`) could add there a function or operator that is a closer match for a call in the
# body of a function running with another role's rights (the owner's, for SECURITY DEFINER and
# whatever those call; the relay's, for outbox_fold_counts()) than the built-in: a polymorphic
# built-in loses to a concrete signature, one reached through an implicit cast to an exact one.
# The lookalikes below are planted for every built-in name the bodies call, with concrete
# types in place of the polymorphic ones and every pair of CONCRETE types for one or two
# arguments; and for every operator symbol in the bodies, with every pair of OPERAND types.
CONCRETE = (
    "text",
    "varchar",
    "name",
    "bigint",
    "integer",
    "numeric",
    "boolean",
    "jsonb",
    "timestamptz",
    "interval",
    "uuid",
    "regclass",
    "oid",
    "text[]",
    "bigint[]",
)
OPERAND = (
    "text",
    "bigint",
    "integer",
    "numeric",
    "boolean",
    "timestamptz",
    "interval",
    "uuid",
    "jsonb",
)
OPERATORS = ("<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/")
POLYMORPHIC = {
    "anyelement": "{t}",
    "anynonarray": "{t}",
    "anycompatible": "{t}",
    "anycompatiblenonarray": "{t}",
    '"any"': "{t}",
    "anyarray": "{t}[]",
    "anycompatiblearray": "{t}[]",
}
TRIPWIRE = (
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'lookalike % ran as %', {label},"
    " current_user; END $$"
)


def _bodies(conn: psycopg.Connection) -> dict[str, str]:
    """Every function of the outbox's schema: signature -> body without comments and strings."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p"
        " WHERE p.pronamespace = current_schema()::regnamespace"
    ).fetchall()
    return {
        sig: re.sub(r"'(?:[^']|'')*'", "''", re.sub(r"--[^\n]*", "", src)).lower()
        for sig, src in rows
    }


def _calls(conn: psycopg.Connection, body: str, *, bare: bool) -> set[str]:
    """The names of the built-in functions `body` calls: all, or those without a schema."""
    before = r"(?<![\w.$])" if bare else r"(?<![\w$])(?:pg_catalog\s*\.\s*)?"
    names = set(re.findall(before + r"([a-z_][a-z0-9_]*)\s*\(", body))
    return {
        name
        for (name,) in conn.execute(
            "SELECT DISTINCT proname::text FROM pg_proc"
            " WHERE pronamespace = 'pg_catalog'::regnamespace AND proname = ANY(%s)",
            (sorted(names),),
        )
    }


def _lookalikes(conn: psycopg.Connection, names: set[str]) -> set[tuple[str, tuple[str, ...], str]]:
    """(name, argument types, RETURNS clause) of the lookalikes of these built-ins."""
    found = set()
    overloads = conn.execute(
        "SELECT proname::text, array(SELECT format_type(t, NULL) FROM unnest(proargtypes) t),"
        " format_type(prorettype, NULL), proretset, provariadic <> 0 FROM pg_proc"
        " WHERE pronamespace = 'pg_catalog'::regnamespace AND proname = ANY(%s)",
        (sorted(names),),
    ).fetchall()
    for name, args, returns, setof, variadic in overloads:
        shapes = [list(args)]
        if variadic:  # VARIADIC element[]: one and two elements
            element = POLYMORPHIC.get(args[-1].removesuffix("[]"), args[-1].removesuffix("[]"))
            shapes = [args[:-1] + [element] * n for n in (1, 2)]
        for shape in shapes:
            for t in CONCRETE:
                concrete = tuple(POLYMORPHIC.get(a, a).format(t=t) for a in shape)
                result = POLYMORPHIC.get(returns, returns).format(t=t).replace("[][]", "[]")
                kind = ("SETOF " if setof else "") + result
                found.add((name, tuple(a.replace("[][]", "[]") for a in concrete), kind))
            if len(shape) <= 2:  # a built-in reached through an implicit cast
                for combo in itertools.product(CONCRETE, repeat=len(shape)):
                    kind = ("SETOF " if setof else "") + POLYMORPHIC.get(returns, returns).format(
                        t=combo[0] if combo else "text"
                    )
                    found.add((name, combo, kind.replace("[][]", "[]")))
    return found


def _plant(conn: psycopg.Connection, bodies: dict[str, str]) -> set[str]:
    """Plant the lookalikes in `public` through `conn`; the built-in names they cover."""
    covered = set()
    calls = set().union(*(_calls(conn, b, bare=False) for b in bodies.values()))
    for name, args, kind in sorted(_lookalikes(conn, calls)):
        label = f"'{name}({', '.join(args)})'"
        try:
            conn.execute(
                f"CREATE FUNCTION public.{name}({', '.join(args)}) RETURNS {kind} "
                + TRIPWIRE.format(label=label)
            )
            covered.add(name)
        except psycopg.errors.DuplicateFunction:
            pass
        except (
            psycopg.errors.InvalidFunctionDefinition,
            psycopg.errors.UndefinedObject,
            psycopg.errors.InvalidParameterValue,
            psycopg.errors.DatatypeMismatch,
            psycopg.errors.FeatureNotSupported,
            psycopg.errors.SyntaxError,
        ):
            pass  # not a signature PostgreSQL takes (e.g. a return type it cannot infer)
    symbols = {op for op in OPERATORS if any(f" {op} " in f" {b} " for b in bodies.values())}
    for n, (op, left, right) in enumerate(itertools.product(symbols, OPERAND, OPERAND)):
        returns = "boolean" if op in ("<>", "<=", ">=", "=", "<", ">") else left
        label = f"'{left} {op} {right}'"
        conn.execute(
            f"CREATE FUNCTION public.lookalike_op_{n}({left}, {right}) RETURNS {returns} "
            + TRIPWIRE.format(label=label)
        )
        conn.execute(
            f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right},"
            f" FUNCTION = public.lookalike_op_{n})"
        )
    for n, t in enumerate(OPERAND):  # -count(*)
        conn.execute(
            f"CREATE FUNCTION public.lookalike_neg_{n}({t}) RETURNS {t} "
            + TRIPWIRE.format(label=f"'- {t}'")
        )
        conn.execute(
            f"CREATE OPERATOR public.- (RIGHTARG = {t}, FUNCTION = public.lookalike_neg_{n})"
        )
    return covered


def _exercise(logins: dict[str, str]) -> list[str]:
    """Run every function of the outbox (each branch that can run) as the role that calls it;
    the errors, if any."""
    errors = []

    def run(role: str, statement: str, expected: type[Exception] | None = None) -> None:
        with psycopg.connect(logins[role], autocommit=True) as conn:
            try:
                conn.execute(statement)
            except psycopg.Error as error:
                if expected is None or not isinstance(error, expected):
                    errors.append(f"{role}: {statement}: {error}")

    for n, customer in enumerate(("cus_1", "cus_2", "cus_1")):  # outbox_wake wins the first
        run("writer", f"SELECT outbox_record_usage('api_calls', '{customer}', 1, 'la-{n}')")
    run("writer", "SELECT outbox_record_usage('api_calls', 'cus_1', 1, 'la-0')")  # a replay
    run(
        "writer",
        "SELECT outbox_record_usage('api_calls', 'cus_9', 1, 'la-0')",
        psycopg.errors.UniqueViolation,
    )  # a conflict
    run(
        "writer",
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " VALUES ('la-3', 'api_calls', 'cus_3', 1), ('la-4', 'other', 'cus_4', 2)",
    )
    run("relay", "SELECT meter_event_outbox_possibly_sent(id) FROM meter_event_outbox")
    run(
        "relay",
        "UPDATE meter_event_outbox SET state = 'in_flight',"
        " lease_token = pg_catalog.gen_random_uuid() WHERE identifier = 'la-1'",
    )
    run(
        "relay",
        "UPDATE meter_event_outbox SET state = 'failed', last_error_code = 'boom'"
        " WHERE identifier = 'la-2'",
    )
    run(
        "relay",
        "UPDATE meter_event_outbox SET cancel_requested_at = pg_catalog.now(),"
        " state = 'cancelled' WHERE identifier = 'la-3'",
    )
    run("relay", "SELECT outbox_fold_counts()")
    run("relay", "DELETE FROM meter_event_outbox WHERE identifier = 'la-4'")
    run("relay", "SELECT outbox_fold_counts()")
    run(
        "relay",
        "SELECT meter_event_outbox_summarize_ranges(),"
        " meter_event_outbox_forget_ranges(ARRAY[0::bigint, 200::bigint])",
    )
    return errors


def test_no_lookalike_runs_in_the_functions_of_the_outbox(
    database_url: str, logins: dict[str, str]
) -> None:
    """A role that may create in the outbox's schema plants lookalikes of every built-in
    function and operator the outbox's functions use; calling every one of them (as the writer
    and the relay, triggers included) runs none of the lookalikes and fails nowhere."""
    planter = urllib.parse.urlsplit(logins["writer"]).username
    with psycopg.connect(database_url, autocommit=True) as owner:
        bodies = _bodies(owner)
        owner.execute("GRANT CREATE ON SCHEMA public TO outbox_writer")  # PostgreSQL 14's default
        try:
            with psycopg.connect(logins["writer"], autocommit=True) as conn:
                covered = _plant(conn, bodies)
            assert {
                "array_agg",
                "cardinality",
                "unnest",
                "pg_notify",
                "hashtext",
                "brin_desummarize_range",
                "now",
                "count",
                "sum",
            } <= covered
            assert _exercise(logins) == []
            with psycopg.connect(database_url) as conn:
                states = dict(
                    conn.execute(
                        "SELECT identifier, state FROM meter_event_outbox ORDER BY 1"
                    ).fetchall()
                )
                assert states == {
                    "la-0": "pending",
                    "la-1": "in_flight",
                    "la-2": "failed",
                    "la-3": "cancelled",
                }
        finally:  # the writer's login is dropped after the test: nothing of it may remain
            owner.execute(f'DROP OWNED BY "{planter}"')
            owner.execute("REVOKE CREATE ON SCHEMA public FROM outbox_writer")


def test_the_functions_of_the_outbox_name_the_built_ins_they_call(database_url: str) -> None:
    """Every built-in function a body of the outbox's schema calls is named in pg_catalog
    (including branches no test reaches), and every SECURITY DEFINER function puts pg_catalog
    first on its search_path."""
    with psycopg.connect(database_url) as conn:
        bodies = _bodies(conn)
        bare = {sig: calls for sig, b in bodies.items() if (calls := _calls(conn, b, bare=True))}
        paths = dict(
            conn.execute(
                "SELECT p.oid::regprocedure::text, p.proconfig[1] FROM pg_proc p"
                " WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef"
            ).fetchall()
        )
    assert len(bodies) >= 11 and len(paths) >= 9
    assert bare == {}
    assert set(paths.values()) == {"search_path=pg_catalog, public, pg_temp"}


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

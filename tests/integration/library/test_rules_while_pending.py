"""The rules on what the application writes hold for every row that can still be sent: they are
checked while a row is pending (its insert, and a retry that makes it pending again), not on the
updates that take it out of pending (an outcome), which never change that content and which
PostgreSQL would otherwise make re-check it all (every CHECK runs on every update).

The migration adds the rules NOT VALID and validates them at once on a small table; on a table
over 64 MB it leaves them for later (a check of every row under ALTER TABLE's lock would hold the
application's inserts), and `outbox-relay doctor` gives the online command."""

import json

import psycopg
import pytest

from relay.cli.doctor import Report, check_database
from relay.db import migrate, roles
from tests.acceptance.process.test_roles import _as_user
from tests.pg import admin_execute, unique_name

RULES = (
    "customer_valid",
    "dimensions_valid",
    "event_name_valid",
    "identifier_valid",
    "metadata_valid",
    "stripe_account_valid",
    "trace_context_size",
    "value_valid",
)
TOO_BIG = json.dumps({"pad": "x" * 17_000})  # over the 16,384 bytes the rule allows


def _row(db: psycopg.Connection) -> int:
    got = db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " VALUES ('r1', 'api_calls', 'cus_1', 1) RETURNING id"
    ).fetchone()
    assert got is not None
    return int(got[0])


def test_an_update_taking_a_row_out_of_pending_does_not_check_the_content(
    db: psycopg.Connection,
) -> None:
    """Content the rules refuse, set by the very update that settles the row, is not looked at:
    the rules are not evaluated once the row is no longer pending."""
    row = _row(db)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', metadata = %s::jsonb,"
        " customer = 'not a customer' WHERE id = %s",
        (TOO_BIG, row),
    )
    assert db.execute("SELECT state FROM meter_event_outbox WHERE id = %s", (row,)).fetchone() == (
        "accepted",
    )


def test_the_time_window_holds_for_every_row(db: psycopg.Connection) -> None:
    """The window (two comparisons) is still checked on every update: the queries bounded by
    time rely on it for every row, history included (drift bounds created_at by occurred_at)."""
    row = _row(db)
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(
            "UPDATE meter_event_outbox SET state = 'accepted',"
            " occurred_at = created_at + interval '1 hour' WHERE id = %s",
            (row,),
        )
    assert err.value.diag.constraint_name == "meter_event_outbox_occurred_at_window"


def test_a_pending_row_is_checked_on_insert_and_on_every_update(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, metadata)"
            " VALUES ('r0', 'api_calls', 'cus_1', 1, %s::jsonb)",
            (TOO_BIG,),
        )
    assert err.value.diag.constraint_name == "meter_event_outbox_metadata_valid"
    row = _row(db)
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(
            "UPDATE meter_event_outbox SET metadata = %s::jsonb WHERE id = %s", (TOO_BIG, row)
        )
    assert err.value.diag.constraint_name == "meter_event_outbox_metadata_valid"


@pytest.mark.parametrize("state", ["failed", "rejected", "accepted"])
def test_a_row_made_pending_again_is_checked_again(state: str, db: psycopg.Connection) -> None:
    """A retry makes a row pending again: the rules run again, so nothing they refuse can be
    sent, whatever was written to the row while it was out of pending."""
    row = _row(db)
    db.execute(
        "UPDATE meter_event_outbox SET state = %s, metadata = %s::jsonb WHERE id = %s",
        (state, TOO_BIG, row),
    )
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute("UPDATE meter_event_outbox SET state = 'pending' WHERE id = %s", (row,))
    assert err.value.diag.constraint_name == "meter_event_outbox_metadata_valid"


def test_the_rules_are_validated_on_a_small_table(db: psycopg.Connection) -> None:
    validated = dict(
        db.execute(
            "SELECT conname, convalidated FROM pg_constraint"
            " WHERE conrelid = 'meter_event_outbox'::regclass AND contype = 'c'"
        ).fetchall()
    )
    assert all(validated[f"meter_event_outbox_{rule}"] for rule in RULES), validated


def test_on_a_large_table_the_rules_are_enforced_unvalidated_and_doctor_says_how_to_validate(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    migrate.upgrade(url, "outbox_0029")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(  # about 80 MB of heap: rows of 1.5 KB, stored inline
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, metadata)"
            " SELECT 'r' || g, 'api_calls', 'cus_1', 1,"
            "        jsonb_build_object('pad', repeat(md5(g::text), 45))"
            " FROM generate_series(1, 50000) g"
        )
        size = conn.execute("SELECT pg_relation_size('meter_event_outbox')").fetchone()
        assert size is not None and size[0] > 64 * 1024 * 1024
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        unvalidated = [
            name
            for (name,) in conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'meter_event_outbox'::regclass"
                " AND NOT convalidated ORDER BY conname"
            )
        ]
        assert unvalidated == [f"meter_event_outbox_{rule}" for rule in RULES]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
                " VALUES ('new', 'api_calls', 'not a customer', 1)"
            )
        report = Report()
        check_database(report, url)
        (note,) = [c for c in report.checks if "not yet checked" in c.message]
        assert note.level == "ok" and note.message.startswith("8 rules are enforced")
        for statement in note.fix.split(": ", 1)[1].split("; "):
            conn.execute(statement)  # the online command doctor gives, as given
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'meter_event_outbox'::regclass"
            " AND NOT convalidated"
        ).fetchone() == (0,)
    report = Report()
    check_database(report, url)
    assert not [c for c in report.checks if "not yet checked" in c.message]


def test_a_fresh_tables_first_range_has_no_summary_to_widen(db: psycopg.Connection) -> None:
    """The block range index of a fresh table keeps no summary of its first range, so an insert
    there writes nothing to the index: an insert into a summarized range logs the widening of
    the summary (about 30 bytes of WAL per fact). Summarizing now finds that range to do."""
    for n in range(20):
        db.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 1, %s)", (f"f{n}",))
    summarized = db.execute(
        "SELECT brin_summarize_new_values('meter_event_outbox_created_brin'::regclass)"
    ).fetchone()
    assert summarized == (1,)


def _unvalidated(conn: psycopg.Connection) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'meter_event_outbox'::regclass"
            " AND NOT convalidated ORDER BY conname"
        )
    ]


def test_a_not_valid_constraint_of_the_applications_own_is_left_alone(
    empty_database_url: str,
) -> None:
    """An application may keep a rule of its own on the table NOT VALID, its old rows breaking
    it: the migration validates its eight rules only (the upgrade and the downgrade failed with
    that rule's CheckViolation), and doctor's note is about those eight only."""
    url = empty_database_url
    migrate.upgrade(url, "outbox_0029")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT outbox_record_usage('api_calls', 'legacy-customer', 1, 'old')")
        conn.execute(
            "ALTER TABLE meter_event_outbox ADD CONSTRAINT shop_customer_prefix"
            " CHECK (customer LIKE 'cus\\_%') NOT VALID"
        )
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _unvalidated(conn) == ["shop_customer_prefix"]
    report = Report()
    check_database(report, url)
    assert not [c for c in report.checks if "not yet checked" in c.message]
    assert "shop_customer_prefix" not in str(report.checks)
    migrate.downgrade(url, "outbox_0029")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _unvalidated(conn) == ["shop_customer_prefix"]


def test_the_size_that_decides_the_validation_counts_the_toast_table(
    empty_database_url: str,
) -> None:
    """Metadata of several KB lives in the TOAST table, and the metadata rule reads it all
    back: 72 MB of it behind a 2 MB heap is not validated under the migration's lock."""
    url = empty_database_url
    migrate.upgrade(url, "outbox_0029")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(  # 16,000 bytes of hex per row: stored out of line, uncompressed
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, metadata)"
            " SELECT 'r' || g, 'api_calls', 'cus_1', 1, jsonb_build_object('pad',"
            "   (SELECT string_agg(md5(g::text || '.' || i::text), '')"
            "    FROM generate_series(1, 500) i))"
            " FROM generate_series(1, 4500) g"
        )
        sizes = conn.execute(
            "SELECT pg_relation_size('meter_event_outbox'), pg_table_size('meter_event_outbox')"
        ).fetchone()
        assert sizes is not None
        assert sizes[0] < 64 * 1024 * 1024 < sizes[1]
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _unvalidated(conn) == [f"meter_event_outbox_{rule}" for rule in RULES]


def test_doctors_note_names_the_owner_who_may_validate(
    db: psycopg.Connection, database_url: str, pg_admin_url: str
) -> None:
    """Doctor runs as the relay's role, which may not VALIDATE (the table owner's right): the
    note says whose command it is, and names the table by its schema."""
    definition = db.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'meter_event_outbox_customer_valid'"
    ).fetchone()
    assert definition is not None
    db.execute(
        "ALTER TABLE meter_event_outbox DROP CONSTRAINT meter_event_outbox_customer_valid,"
        f" ADD CONSTRAINT meter_event_outbox_customer_valid {definition[0]} NOT VALID"
    )
    owner = db.execute("SELECT current_user").fetchone()
    assert owner is not None
    roles.apply(database_url)
    login = unique_name("t_relay")
    admin_execute(pg_admin_url, f'CREATE ROLE "{login}" LOGIN IN ROLE outbox_relay')
    try:
        as_relay = _as_user(database_url, login)
        report = Report()
        check_database(report, as_relay)
        (note,) = [c for c in report.checks if "not yet checked" in c.message]
        assert f"as the table's owner {owner[0]}:" in note.fix
        (statement,) = note.fix.split(": ", 1)[1].split("; ")
        assert statement == (
            "ALTER TABLE public.meter_event_outbox"
            " VALIDATE CONSTRAINT meter_event_outbox_customer_valid"
        )
        with (
            psycopg.connect(as_relay, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)
        db.execute(statement)
    finally:
        admin_execute(pg_admin_url, f'DROP ROLE IF EXISTS "{login}"')

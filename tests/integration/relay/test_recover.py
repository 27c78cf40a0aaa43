"""`outbox-relay recover`: a database moved without its UNLOGGED tables (logical replication
skips them; a copy of the data only) into a schema whose migration wrote their markers anew.
No fold can tell what was lost there; the command does what the first fold after a crash does."""

import json
import re
import threading

import psycopg

import outbox
from relay.db.pool import QUERIES
from tests.acceptance.process.test_process import wait_for
from tests.helpers import scalar
from tests.integration.relay.test_operator_commands import cli
from tests.support.relay import claim, fold, insert_usage, row


def moved(db: psycopg.Connection) -> None:
    """What the move leaves in the new database: every LOGGED table's rows (replicated or
    copied), none of the UNLOGGED tables' (the leases, the tally deltas), and the markers the new
    schema's `migrate` wrote, which say that nothing was lost."""
    db.execute("TRUNCATE meter_event_outbox_leases, meter_event_outbox_tally_deltas")


def recover(database_url: str, *args: str) -> tuple[int, str]:
    ran = cli(database_url, "recover", *args)
    return ran.returncode, ran.stdout + ran.stderr


def pending_count(database_url: str) -> int:
    ran = cli(database_url, "status", "--json")
    assert ran.returncode == 0, ran.stderr
    return int(json.loads(ran.stdout)["counts"]["pending"])


def test_after_a_move_a_cancel_of_a_report_at_stripe_waits_for_its_outcome(
    database_url: str, db
) -> None:
    """The row's first call is at Stripe when the database moves: its lease (the only sign of
    that) stays behind. Without `recover` the moved row looks never sent and a cancel cancels
    it on the spot, while Stripe counts the report (billed for a cancelled fact). After it, the
    cancel is only stamped and the report is resolved first, as after a crash (invariant 10)."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    moved(db)
    fold(db)
    sent = "SELECT meter_event_outbox_possibly_sent(%s)"
    assert scalar(db, sent, claimed.id) is False  # what a cancel would believe
    code, out = recover(database_url, "--yes", "--json")
    assert code == 0, out
    done = json.loads(out)
    assert done["possibly_sent_below"] >= claimed.id
    assert done["tallies_recounted"] is True
    assert scalar(db, sent, claimed.id) is True
    assert outbox.cancel_usage(db, identifier="u1").state == "pending"
    r = row(database_url, "u1")
    assert r["state"] == "pending" and r["cancel_requested_at"] is not None


def test_after_a_move_recover_recounts_the_tallies(database_url: str, db) -> None:
    """Facts recorded and not folded before the move lived only in the UNLOGGED deltas:
    `status` showed them missing for good; the recount reads them from the outbox."""
    insert_usage(database_url, 4, prefix="a")
    fold(db)
    insert_usage(database_url, 3, prefix="b")
    moved(db)
    fold(db)
    assert pending_count(database_url) == 4
    code, out = recover(database_url, "--yes")
    assert code == 0, out
    assert "tallies recounted" in out
    assert pending_count(database_url) == 7


WAITING_ON_THE_FOLD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_recover_waits_for_a_fold_running_now_and_then_recounts(database_url: str, db) -> None:
    """`outbox_fold_counts()` only tries its lock: a relay's fold running at that moment would
    have made the command's fold a no-op and left the recount to the next one. It waits."""
    insert_usage(database_url, 2, prefix="c")
    moved(db)
    with psycopg.connect(database_url) as relay:
        relay.execute("SELECT outbox_fold_counts()")  # holds the fold's lock until commit
        ran: list[tuple[int, str]] = []
        worker = threading.Thread(target=lambda: ran.append(recover(database_url, "--yes")))
        worker.start()
        wait_for(lambda: scalar(db, WAITING_ON_THE_FOLD))  # the command waits on its lock
        relay.commit()
        worker.join()
    assert ran and ran[0][0] == 0, ran
    assert "tallies recounted" in ran[0][1]
    assert pending_count(database_url) == 2


def test_recover_recounts_under_a_database_default_of_repeatable_read(
    database_url: str, db
) -> None:
    """The recount runs in READ COMMITTED only (outbox_0032); the relay's pool sets it, an
    operator's connection took the database's default: under REPEATABLE READ nothing was
    recounted and the command blamed prepared transactions (0 of them)."""
    insert_usage(database_url, 4, prefix="a")
    fold(db)
    insert_usage(database_url, 3, prefix="b")
    moved(db)
    name = scalar(db, "SELECT current_database()")
    db.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'")
    try:
        code, out = recover(database_url, "--yes", "--json")
    finally:
        db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_isolation')
    assert code == 0, out
    assert json.loads(out)["tallies_recounted"] is True
    assert pending_count(database_url) == 7


def test_recover_refuses_while_logical_replication_applies_changes(database_url: str, db) -> None:
    """Rows copied after it would lie above its watermark again, and the source's folded
    tallies would collide with its recount (the apply worker stops on a duplicate key)."""
    insert_usage(database_url, 1)
    db.execute(
        "CREATE SUBSCRIPTION recover_probe CONNECTION 'host=127.0.0.1 port=1 dbname=none'"
        " PUBLICATION none WITH (connect = false)"
    )
    try:
        db.execute("ALTER SUBSCRIPTION recover_probe ENABLE")
        code, out = recover(database_url, "--yes")
        assert code == 2, out
        assert "subscription recover_probe" in out and "disabled or dropped" in out
        assert scalar(db, "SELECT count(*) FROM meter_event_outbox_lease_epoch") == 1
        db.execute("ALTER SUBSCRIPTION recover_probe DISABLE")
        code, out = recover(database_url, "--yes")
        assert code == 0, out
    finally:
        db.execute("ALTER SUBSCRIPTION recover_probe DISABLE")
        db.execute("ALTER SUBSCRIPTION recover_probe SET (slot_name = NONE)")
        db.execute("DROP SUBSCRIPTION recover_probe")


def test_recover_names_the_sequences_a_move_left_behind(database_url: str, db) -> None:
    """Logical replication carries rows, not sequences: the outbox's id sequence lies below the
    ids already there, and the next fact recorded fails on a duplicate key. The relay's role
    may not set a sequence: the command names each one with its owner's statement, exit 3."""
    db.execute(
        "INSERT INTO meter_event_outbox (id, identifier, event_name, customer, value)"
        " OVERRIDING SYSTEM VALUE VALUES (500, 'copied', 'api_calls', 'cus_1', 1)"
    )
    code, out = recover(database_url, "--yes", "--json")
    assert code == 3, out
    (behind,) = json.loads(out)["sequences_behind"]
    assert behind["sequence"].endswith("meter_event_outbox_id_seq")
    db.execute(behind["fix"])
    insert_usage(database_url, 1, prefix="after")
    assert scalar(db, "SELECT id FROM meter_event_outbox WHERE identifier = 'after1'") == 501
    code, out = recover(database_url, "--yes")
    assert code == 0, out


def test_sequences_behind_covers_every_sequence_of_the_outbox(db) -> None:
    """A later migration's sequence must join `sequences_behind` in relay/db/queries.sql."""
    named = {
        b
        for b in re.findall(r"pg_get_serial_sequence\('(\w+)', 'id'\)", QUERIES["sequences_behind"])
    }
    owned = {
        r[0]
        for r in db.execute(
            "SELECT t.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
            " JOIN pg_class t ON t.oid = d.refobjid"
            " WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i')"
            " AND t.relnamespace = current_schema()::regnamespace"
            " AND (t.relname LIKE 'meter\\_event\\_outbox%' OR t.relname LIKE 'outbox\\_%')"
        )
    }
    assert named == owned


def test_recover_asks_first_and_without_a_terminal_needs_yes(database_url: str, db) -> None:
    insert_usage(database_url, 1)
    before = scalar(db, "SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
    code, out = recover(database_url)
    assert code == 2
    assert "pass --yes" in out and "Traceback" not in out
    after = scalar(db, "SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
    assert after == before

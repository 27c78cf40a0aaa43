"""`outbox-relay recover`: a database moved without its UNLOGGED tables (logical replication
skips them; a copy of the data only) into a schema whose migration wrote their markers anew.
No fold can tell what was lost there; the command does what the first fold after a crash does."""

import json
import threading

import psycopg
from click.testing import CliRunner

import outbox
from relay.cli.commands import main
from relay.db import queries
from relay.db.store import SyncStore
from tests.acceptance.process.test_process import wait_for
from tests.helpers import scalar
from tests.support.relay import claim, insert_usage, row


def moved(db: psycopg.Connection) -> None:
    """What the move leaves in the new database: every LOGGED table's rows (replicated or
    copied), none of the UNLOGGED tables' (the leases, the tally deltas), and the markers the new
    schema's `migrate` wrote, which say that nothing was lost."""
    db.execute("TRUNCATE meter_event_outbox_leases, meter_event_outbox_tally_deltas")


def fold(db: psycopg.Connection) -> None:
    """A relay's fold on the new database: it sees its markers and notices nothing."""
    SyncStore(db).all(queries.FOLD_COUNTS({}))


def recover(database_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["recover", *args], env={"OUTBOX_DATABASE_URL": database_url})
    return result.exit_code, result.output


def pending_count(database_url: str) -> int:
    result = CliRunner().invoke(
        main, ["status", "--json"], env={"OUTBOX_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    return int(json.loads(result.output)["counts"]["pending"])


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


def test_recover_asks_first_and_without_a_terminal_needs_yes(database_url: str, db) -> None:
    insert_usage(database_url, 1)
    before = scalar(db, "SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
    code, out = recover(database_url)
    assert code == 2
    assert "pass --yes" in out and "Traceback" not in out
    after = scalar(db, "SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
    assert after == before

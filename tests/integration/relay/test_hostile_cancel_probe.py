"""Hostile review of outbox_0024's cancel trigger: it probes the lease key with an INSERT, and
an INSERT waits for a transaction that is deleting that key. An outcome (or a webhook's
rejection) deletes its leases first and updates the rows after, so a cancel that holds its row
and waits on the outcome's deleted lease closes a cycle: outcome -> row held by the cancel,
cancel -> lease being deleted by the outcome. outbox_0020's trigger read the lease table and
never waited. Since outbox_0029 the trigger reads the lease table first and probes only when
it sees no lease."""

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

import outbox
from outbox.sqlfile import for_psycopg, load
from relay.core.rows import Outcome
from relay.db.store import SyncStore
from tests.acceptance.process.test_process import wait_for
from tests.integration.relay.test_lease_review import reject
from tests.support.relay import claim, insert_usage, row


def _blocked(db: psycopg.Connection, conn: psycopg.Connection) -> bool:
    found = db.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", (conn.info.backend_pid,))
    return bool((found.fetchone() or (False,))[0])


# The previous release's cancel_usage (tests/support/previous_release.sql): applications still
# on it during a rolling upgrade cancel a pending row never sent whatever its lease.
PREVIOUS = load("tests.support", "previous_release.sql")
RELEASES = pytest.mark.parametrize("release", ["this", "previous"])
# what each release's cancel_usage answers for a row whose report is in flight
IN_FLIGHT = {"this": "in_flight", "previous": "pending"}


def _cancel_in(conn: psycopg.Connection, identifier: str, release: str = "this") -> str:
    """cancel_usage in the application's open transaction."""
    if release == "previous":
        cancel = for_psycopg(PREVIOUS["cancel_usage"])
        found = conn.execute(cancel, {"identifier": identifier}).fetchone()
        assert found is not None
        return str(found[1])
    return outbox.cancel_usage(conn, identifier=identifier).state


def _cancel(conn: psycopg.Connection, identifier: str, release: str = "this") -> str:
    with conn.transaction():  # the application's transaction
        return _cancel_in(conn, identifier, release)


@RELEASES
def test_a_cancel_racing_an_outcome_batch_never_deadlocks(
    database_url: str, db, release: str
) -> None:
    """Rows 1 and 2 in flight with one relay. An application transaction holds row 2 (it
    cancelled it, or is about to). The relay's outcome batch (rows 2 and 1) has deleted both
    leases and waits for row 2. Another application transaction cancels row 1: under
    outbox_0020 its trigger saw the lease (the deletion is not committed) and only stamped the
    request; outbox_0024's probe waited for the outcome, and when row 2 was released the outcome
    waited for row 1: PostgreSQL aborted one of them (the cancel: it waited first). This
    release's cancel_usage sees the lease itself and leaves the row pending, which runs no
    trigger since outbox_0028; the previous release's cancels the row, and the trigger reads
    the lease table first again (outbox_0029): it sees the lease and only stamps."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    relay = psycopg.connect(database_url, autocommit=True)
    app = psycopg.connect(database_url, autocommit=True)
    holder = psycopg.connect(database_url)  # another application transaction on row 2
    holder.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
    batch = [Outcome(row=two, state="accepted"), Outcome(row=one, state="accepted")]
    with ThreadPoolExecutor(2) as pool, relay, app, holder:
        written = pool.submit(SyncStore(relay).record_outcomes, batch, "relay-a")
        wait_for(lambda: _blocked(db, relay), timeout=10)  # leases deleted, waits for row 2
        cancelled = pool.submit(_cancel, app, one.identifier, release)
        # the trigger sees the lease (its deletion is not committed) and only stamps
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        assert cancelled.result(timeout=30) == IN_FLIGHT[release]
        assert written.result(timeout=30) == {one.id, two.id}
    # the report of row 1 was accepted, then its cancel requested: a pending cancellation
    assert (row(database_url, one.identifier)["action"]) == "cancel"


@RELEASES
def test_a_cancel_racing_a_webhook_rejection_never_deadlocks(
    database_url: str, db, release: str
) -> None:
    """Stripe's error report names rows 2 and 1 while their reports are in flight; an
    application transaction holds row 2 and another cancels row 1."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    hook = psycopg.connect(database_url, autocommit=True)
    app = psycopg.connect(database_url, autocommit=True)
    holder = psycopg.connect(database_url)
    holder.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
    with ThreadPoolExecutor(2) as pool, hook, app, holder:
        rejected = pool.submit(reject, hook, two.identifier, one.identifier)
        wait_for(lambda: _blocked(db, hook), timeout=10)  # leases deleted, waits for row 2
        cancelled = pool.submit(_cancel, app, one.identifier, release)
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        assert cancelled.result(timeout=30) == IN_FLIGHT[release]
        assert sorted(rejected.result(timeout=30)) == sorted([one.identifier, two.identifier])


def _cancel_and_commit(conn: psycopg.Connection, identifier: str, release: str = "this") -> str:
    """The application's transaction, already open (its snapshot taken): cancel, commit."""
    state = _cancel_in(conn, identifier, release)
    conn.commit()
    return state


@RELEASES
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_snapshot_cancel_that_sees_the_lease_never_deadlocks_with_its_outcome(
    database_url: str, db, isolation: str, release: str
) -> None:
    """The same race in a REPEATABLE READ (or SERIALIZABLE) transaction whose snapshot followed
    the claim: it sees the lease. This release's cancel_usage then leaves the row pending (the
    trigger does not fire); the previous release's cancels it, and the trigger, seeing the lease
    too, only stamps without probing (outbox_0029). outbox_0024's probe waited for the outcome
    deleting that lease: a deadlock."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    relay = psycopg.connect(database_url, autocommit=True)
    app = psycopg.connect(database_url)
    holder = psycopg.connect(database_url)
    with ThreadPoolExecutor(2) as pool, relay, app, holder:
        app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        app.execute("SELECT count(*) FROM meter_event_outbox").fetchone()  # the snapshot
        holder.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
        batch = [Outcome(row=two, state="accepted"), Outcome(row=one, state="accepted")]
        written = pool.submit(SyncStore(relay).record_outcomes, batch, "relay-a")
        wait_for(lambda: _blocked(db, relay), timeout=10)  # leases deleted, waits for row 2
        cancelled = pool.submit(_cancel_and_commit, app, one.identifier, release)
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        assert cancelled.result(timeout=30) == IN_FLIGHT[release]
        assert written.result(timeout=30) == {one.id, two.id}
    assert (row(database_url, one.identifier)["action"]) == "cancel"


@pytest.mark.xfail(
    strict=True,
    raises=psycopg.errors.DeadlockDetected,
    reason="what outbox_0029 leaves: a snapshot that missed the lease can only find it with the "
    "probe, which waits for the outcome deleting it; the outcome then waits for the row the "
    "cancel holds. Closing it takes outcomes and rejections locking their rows before deleting "
    "the leases (a row lock each on the relay's hot path)",
)
def test_a_snapshot_cancel_that_missed_a_lease_being_deleted_never_deadlocks(
    database_url: str, db
) -> None:
    """A REPEATABLE READ transaction took its snapshot before the claim committed the leases,
    and cancels row 1 while the outcome batch (rows 2 and 1) has deleted both leases and waits
    for row 2. A serialization failure of the cancel would be acceptable (the application
    retries); a deadlock (SQLSTATE 40P01, either side aborted) is what remains."""
    insert_usage(database_url, 2, customers=2)
    relay = psycopg.connect(database_url, autocommit=True)
    app = psycopg.connect(database_url)
    holder = psycopg.connect(database_url)
    with ThreadPoolExecutor(2) as pool, relay, app, holder:
        app.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        app.execute("SELECT count(*) FROM meter_event_outbox").fetchone()  # the snapshot
        one, two = claim(db, "relay-a", lease=30)
        holder.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
        batch = [Outcome(row=two, state="accepted"), Outcome(row=one, state="accepted")]
        written = pool.submit(SyncStore(relay).record_outcomes, batch, "relay-a")
        wait_for(lambda: _blocked(db, relay), timeout=10)  # leases deleted, waits for row 2
        cancelled = pool.submit(_cancel_and_commit, app, one.identifier)
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        errors = [f.exception(timeout=30) for f in (cancelled, written)]
        for error in errors:
            if isinstance(error, psycopg.errors.DeadlockDetected):
                raise error
        cancel_error, write_error = errors
        assert write_error is None
        assert cancel_error is None or isinstance(cancel_error, psycopg.errors.SerializationFailure)

"""Hostile review of outbox_0024's cancel trigger: it probes the lease key with an INSERT, and
an INSERT waits for a transaction that is deleting that key. An outcome (or a webhook's
rejection) deletes its leases first and updates the rows after, so a cancel that holds its row
and waits on the outcome's deleted lease closes a cycle: outcome -> row held by the cancel,
cancel -> lease being deleted by the outcome. outbox_0020's trigger read the lease table and
never waited."""

from concurrent.futures import ThreadPoolExecutor

import psycopg

import outbox
from relay.core.rows import Outcome
from relay.db.store import SyncStore
from tests.acceptance.process.test_process import wait_for
from tests.integration.relay.test_lease_review import reject
from tests.support.relay import claim, insert_usage, row


def _blocked(db: psycopg.Connection, conn: psycopg.Connection) -> bool:
    found = db.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", (conn.info.backend_pid,))
    return bool((found.fetchone() or (False,))[0])


def _cancel(conn: psycopg.Connection, identifier: str) -> str:
    with conn.transaction():  # the application's transaction
        return outbox.cancel_usage(conn, identifier=identifier).state


def test_a_cancel_racing_an_outcome_batch_never_deadlocks(database_url: str, db) -> None:
    """Rows 1 and 2 in flight with one relay. An application transaction holds row 2 (it
    cancelled it, or is about to). The relay's outcome batch (rows 2 and 1) has deleted both
    leases and waits for row 2. Another application transaction cancels row 1: under
    outbox_0020 its trigger saw the lease (the deletion is not committed) and only stamped the
    request; under outbox_0024 its probe waited for the outcome, and when row 2 was released
    the outcome waited for row 1: PostgreSQL aborted one of them (the cancel: it waited
    first). Since outbox_0028 a cancel that leaves the row pending (a stamp) runs no probe."""
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
        cancelled = pool.submit(_cancel, app, one.identifier)
        # a stamp only: outbox_0024's probe waited here, outbox_0028 runs none
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        assert cancelled.result(timeout=30) == "in_flight"
        assert written.result(timeout=30) == {one.id, two.id}
    # the report of row 1 was accepted, then its cancel requested: a pending cancellation
    assert (row(database_url, one.identifier)["action"]) == "cancel"


def test_a_cancel_racing_a_webhook_rejection_never_deadlocks(database_url: str, db) -> None:
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
        cancelled = pool.submit(_cancel, app, one.identifier)
        wait_for(lambda: cancelled.done() or _blocked(db, app), timeout=10)
        holder.rollback()
        assert cancelled.result(timeout=30) == "in_flight"
        assert sorted(rejected.result(timeout=30)) == sorted([one.identifier, two.identifier])

"""Hostile review of the UNLOGGED lease (migration outbox_0020): what the lease table must keep
true that the `in_flight` row used to, against cancels, webhook rejections and racing relays."""

import psycopg

import outbox
from relay.core.rows import Outcome
from relay.db import queries
from relay.db.store import SyncStore
from tests.support.relay import claim, expire_leases, insert_usage, row


def write(conn: psycopg.Connection, outcomes: list[Outcome]) -> set[int]:
    return SyncStore(conn).record_outcomes(outcomes, "relay-a")


def test_a_repeated_cancel_of_a_report_in_flight_still_waits_for_its_outcome(
    database_url: str, db
) -> None:
    """An application that calls cancel_usage twice (a retried request) while the first report
    is in flight: the second call must not cancel the row on the spot, or Stripe counts a fact
    the outbox says was cancelled (invariant 10)."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    # Stripe took the report: the cancel is now sent as an adjustment.
    assert write(db, [Outcome(row=claimed, state="accepted")]) == {claimed.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_cancel_after_the_lease_ran_out_waits_for_the_report_s_outcome(
    database_url: str, db
) -> None:
    """A relay died (or is slow) after its call: its lease has expired but nobody took it over
    yet. The report may have landed, so a cancel is only stamped, as it was for an `in_flight`
    row whose deadline had passed; the relay that takes the lease over resolves the report."""
    insert_usage(database_url, 1)
    claim(db, "relay-a", lease=30)
    expire_leases(db)
    outbox.cancel_usage(db, identifier="u1")
    assert row(database_url, "u1")["state"] != "cancelled"
    (taken,) = claim(db, "relay-b", lease=30)
    assert write(db, [Outcome(row=taken, state="accepted")]) == {taken.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_webhook_rejection_after_the_lease_ran_out_is_kept(database_url: str, db) -> None:
    """Stripe's asynchronous error report names a row whose relay died after its call landed
    (lease expired, not yet taken over): the row is rejected, as an `in_flight` row past its
    deadline was, and the relay that would have replayed it leaves it alone."""
    insert_usage(database_url, 1)
    claim(db, "relay-a", lease=30)
    expire_leases(db)
    params: queries.RejectParams = {
        "identifiers": ["u1"],
        "account": None,
        "code": "invalid_customer",
        "message": "no such customer",
    }
    assert SyncStore(db).all(queries.REJECT(params)) == ["u1"]
    assert row(database_url, "u1")["state"] == "rejected"
    assert claim(db, "relay-b", lease=30) == []


def test_a_webhook_rejection_of_a_report_in_flight_with_a_cancel_requested(
    database_url: str, db
) -> None:
    """The cancel trigger now fires on every update of a pending row with a cancel request: a
    rejection (which drops the lease in the same statement) must still go through."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    params: queries.RejectParams = {
        "identifiers": ["u1"],
        "account": None,
        "code": "invalid_customer",
        "message": "no such customer",
    }
    assert SyncStore(db).all(queries.REJECT(params)) == ["u1"]
    assert write(db, [Outcome(row=claimed, state="accepted")]) == set()
    assert row(database_url, "u1")["state"] == "rejected"

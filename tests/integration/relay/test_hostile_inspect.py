"""Hostile review of `inspect` since the lease table (outbox_0020): a relay that died after its
call leaves its row pending with an expired lease, and the row's story must still say that a
report may be at Stripe (it is in flight until a claim takes it over)."""

import psycopg

import outbox
from relay.db import operations
from tests.support.relay import claim, expire_leases, insert_usage


def test_inspect_of_a_row_whose_relay_died_after_its_call_says_it_may_be_at_stripe(
    database_url: str, db: psycopg.Connection
) -> None:
    """relay-a claimed u1, called Stripe and died; its lease ran out and no relay has taken the
    row over yet (all relays down: when an operator looks). Before outbox_0020 the row was
    `in_flight`, leased by relay-a, with its first attempt set. cancel_usage still treats it
    as in flight (only stamps the request); `inspect` should tell the same story."""
    insert_usage(database_url, 1)
    (held,) = claim(db, "relay-a", lease=30)
    expire_leases(db)
    found = operations.inspect(db, "u1")
    assert found is not None
    with db.transaction(force_rollback=True):  # what the library answers, undone
        cancel_says = outbox.cancel_usage(db, identifier="u1").state
    assert cancel_says == "in_flight"
    told = (found["state"], found["leased_by"], found["first_attempt_at"])
    assert told == ("in_flight", "relay-a", held.first_attempt_at), found["summary"]
    assert found["summary"].startswith("in flight: its lease ran out (leased by relay-a")

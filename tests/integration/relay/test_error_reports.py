"""Stripe's asynchronous error reports (webhooks and `reconcile`) mark rows rejected."""

import pytest

from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator, Faults, Latency
from relay.stripe.webhooks import BadDelivery, apply_event
from tests.support.relay import (
    accepted,
    insert_usage,
    make_settings,
    row,
    running_relay,
    state_is,
)


def error_report(code: str, identifiers: list[str]) -> dict:
    """The data of a full meter error event, as fetched from /v2/core/events/{id}."""
    samples = [
        {"error_message": "no such customer", "request": {"identifier": i}} for i in identifiers
    ]
    return {"data": {"reason": {"error_types": [{"code": code, "sample_errors": samples}]}}}


async def test_error_report_matches_exact_identifiers_before_key_suffixes(database_url, db):
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " accepted_at) SELECT i, 'api_calls', 'cus_1', 1, 'accepted', now()"
        " FROM unnest(ARRAY['order-7', 'order-7#g1', 'order-8']) i"
    )
    event = error_report("meter_event_customer_not_found", ["order-7#g1", "order-8#g2"])
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        marked = await apply_event(Store(pool), event)
    finally:
        await pool.close()
    assert sorted(marked) == ["order-7#g1", "order-8"]  # order-7 itself untouched
    assert row(database_url, "order-7")["state"] == "accepted"


async def test_error_report_for_an_in_flight_row_wins_over_its_late_outcome(database_url):
    async with Emulator(rate_limit_test=None) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(800)))
        insert_usage(database_url, 1)
        async with running_relay(make_settings(database_url, emulator)) as relay:
            await relay.until(lambda: state_is(database_url, "u1", "in_flight"))
            event = error_report("meter_event_customer_not_found", ["u1"])
            assert await apply_event(relay.relay.store, event) == ["u1"]
            # The call completes later; its compare-and-set must change nothing.
            await relay.next_flush(timeout=10)
    assert row(database_url, "u1")["state"] == "rejected"


async def test_reconcile_applies_error_events_missed_by_webhooks(database_url):
    """No webhook endpoint configured: `reconcile` pulls the error events and applies them."""
    from datetime import timedelta as hours_ago

    from relay.stripe.reconcile import reconcile
    from relay.stripe.sender import StripeSender

    async with Emulator(rate_limit_test=None, customers={"cus_real"}) as emulator:
        insert_usage(database_url, 1, customer="cus_ghost", prefix="ghost")
        async with running_relay(make_settings(database_url, emulator)) as relay:
            await relay.until(lambda: accepted(database_url, 1))
        await emulator.flush_error_reports_async()
        sender = StripeSender("sk_test_reconcile", emulator.base_url)
        pool = make_pool(database_url)
        await pool.open(wait=True)
        try:
            result = await reconcile(sender.client, Store(pool), hours_ago(hours=1))
        finally:
            await sender.close()
            await pool.close()
    assert result == {"events": 1, "rejected": 1}
    assert row(database_url, "ghost1")["state"] == "rejected"


# (state, action) -> does an error report of the row's own account mark it? Only rows Stripe
# can have counted: accepted, or a report in flight whose call may have landed.
REPORT_STATES = [
    ("pending", "report", False),
    ("pending", "cancel", False),
    ("in_flight", "report", True),
    ("in_flight", "cancel", False),
    ("accepted", "report", True),
    ("failed", "report", False),
    ("rejected", "report", False),
    ("cancelled", "report", False),
]


def insert_in_state(db, identifier: str, account: str | None, state: str, action: str) -> None:
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, stripe_account,"
        " state, action, lease_token, accepted_at) VALUES (%s, 'api_calls', 'cus_1', 1, %s, %s,"
        " %s, CASE WHEN %s = 'in_flight' THEN gen_random_uuid() END, now())",
        (identifier, account, state, action, state),
    )


async def apply_as(database_url: str, event: dict) -> list[str]:
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        return await apply_event(Store(pool), event)
    finally:
        await pool.close()


@pytest.mark.parametrize(("state", "action", "marked"), REPORT_STATES)
@pytest.mark.parametrize("account", [None, "acct_victim"])
async def test_error_report_acts_only_on_its_own_accounts_counted_rows(
    database_url, db, state, action, marked, account
):
    """A connected account naming another account's identifier (or the platform's) marks
    nothing; the row's own account marks it only in a state Stripe can have counted."""
    insert_in_state(db, "order-1", account, state, action)
    for attacker in [None, "acct_attacker", "acct_victim"]:
        if attacker == account:
            continue
        event = error_report("no_meter_found", ["order-1", "order-1#g1"])
        if attacker is not None:
            event["context"] = attacker
        assert await apply_as(database_url, event) == []
        assert row(database_url, "order-1")["state"] == state
    own = error_report("no_meter_found", ["order-1"])
    if account is not None:
        own["context"] = account
    assert await apply_as(database_url, own) == (["order-1"] if marked else [])
    assert row(database_url, "order-1")["state"] == ("rejected" if marked else state)


async def test_error_report_with_a_context_that_is_not_an_account_is_refused(database_url, db):
    insert_in_state(db, "order-1", None, "accepted", "report")
    event = error_report("no_meter_found", ["order-1"])
    event["context"] = {"not": "an account"}
    with pytest.raises(BadDelivery):
        await apply_as(database_url, event)
    assert row(database_url, "order-1")["state"] == "accepted"

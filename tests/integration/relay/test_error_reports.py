"""Stripe's asynchronous error reports (webhooks and `reconcile`) mark rows rejected."""

from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator, Faults, Latency
from relay.stripe.webhooks import apply_event
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

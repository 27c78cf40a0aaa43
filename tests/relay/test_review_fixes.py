"""Regression tests for failure modes found in review: each fails without its fix."""

from datetime import UTC, datetime, timedelta

import psycopg

import outbox
from relay.db import make_pool
from relay.emulator import Emulator, Faults, Latency
from relay.store import Store
from relay.webhooks import apply_event
from tests.relay.conftest import insert_usage, make_settings, row, running_relay, states


def error_report(code: str, identifiers: list[str]) -> dict:
    """The data of a full meter error event, as fetched from /v2/core/events/{id}."""
    samples = [
        {"error_message": "no such customer", "request": {"identifier": i}} for i in identifiers
    ]
    return {"data": {"reason": {"error_types": [{"code": code, "sample_errors": samples}]}}}


async def _accepted(url: str, n: int) -> bool:
    return states(url).get("accepted", 0) == n


async def test_unexpected_send_error_releases_the_row(database_url, emulator, settings):
    """An exception the sender does not classify must not strand the row in_flight."""
    insert_usage(database_url, 1)
    async with running_relay(settings) as relay:
        sender = relay.relay.sender
        real_send, calls = sender.send, []

        async def flaky(row):
            calls.append(row.identifier)
            if len(calls) == 1:
                raise RuntimeError("payload read failed")
            return await real_send(row)

        sender.send = flaky
        await relay.until(lambda: _accepted(database_url, 1))
    r = row(database_url, "u1")
    assert (r["attempts"], r["key_generation"]) == (2, 0)  # same key: outcome was unknown
    assert emulator.counted("u1") == 1


async def test_forced_retry_is_actually_sent(database_url, emulator, settings, db):
    insert_usage(database_url, 1)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', attempts = 3,"
        " last_error_code = 'dedup_window_expired', first_attempt_at = now() - interval '21h'"
    )
    from relay import ops

    requeued, _ = ops.retry(db, identifier="u1", code=None, force=True, window_hours=20)
    assert requeued == ["u1"]
    async with running_relay(settings) as relay:
        await relay.until(lambda: _accepted(database_url, 1))
    assert emulator.counted("u1") == 1


async def test_lanes_behind_many_backing_off_lanes_are_reached(database_url, emulator, db):
    """Invariant 7 after an outage: 300 lanes in backoff sort before 10 due lanes."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, available_at)"
        " SELECT 'later' || g, 'api_calls', 'cus_a' || lpad(g::text, 4, '0'), 1,"
        " now() + interval '1 hour' FROM generate_series(1, 300) g"
    )
    insert_usage(database_url, 10, customer="cus_z", prefix="due", customers=10)
    settings = make_settings(database_url, emulator, batch_size=5, concurrency=5)
    async with running_relay(settings) as relay:
        await relay.until(lambda: _accepted(database_url, 10), timeout=15)


async def test_outcomes_are_written_while_an_application_cancel_is_uncommitted(
    database_url, emulator, settings
):
    """The status counters must not make the relay wait on an application's transaction."""
    insert_usage(database_url, 2, customers=2)
    async with running_relay(settings) as relay:
        await relay.until(lambda: _accepted(database_url, 2))
        with psycopg.connect(database_url) as app:
            outbox.cancel_usage(app, identifier="u1")  # uncommitted: holds its locks
            insert_usage(database_url, 1, customer="cus_new", prefix="fresh")
            await relay.until(lambda: _state(database_url, "fresh1", "accepted"), timeout=10)
            app.rollback()


async def _state(url: str, identifier: str, state: str) -> bool:
    return row(url, identifier)["state"] == state


async def test_usage_a_few_minutes_ahead_waits_instead_of_failing(database_url, emulator, db):
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, occurred_at)"
        " VALUES ('soon', 'api_calls', 'cus_1', 1, now() + interval '4 minutes 50 seconds')"
    )
    async with running_relay(make_settings(database_url, emulator)) as relay:
        await relay.until(lambda: _code(database_url, "soon", "timestamp_in_future"))
    r = row(database_url, "soon")
    assert (r["state"], r["attempts"]) == ("pending", 0)
    assert r["available_at"] > datetime.now(UTC) + timedelta(seconds=30)
    assert emulator.requests("/v1/billing/meter_events") == 0


async def _code(url: str, identifier: str, code: str) -> bool:
    return row(url, identifier)["last_error_code"] == code


async def test_cancel_requested_while_in_flight_is_sent_after_acceptance(database_url):
    async with Emulator(rate_limit_test=None) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(800)))
        insert_usage(database_url, 1)
        async with running_relay(make_settings(database_url, emulator)) as relay:
            await relay.until(lambda: _state(database_url, "u1", "in_flight"))
            with psycopg.connect(database_url) as app:
                assert outbox.cancel_usage(app, identifier="u1").state == "in_flight"
            await relay.until(lambda: _state(database_url, "u1", "cancelled"), timeout=15)
        assert emulator.total("api_calls", "cus_1") == 0


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
            await relay.until(lambda: _state(database_url, "u1", "in_flight"))
            event = error_report("meter_event_customer_not_found", ["u1"])
            assert await apply_event(relay.relay.store, event) == ["u1"]
            # The call completes later; its compare-and-set must change nothing.
            await relay.next_flush(timeout=10)
    assert row(database_url, "u1")["state"] == "rejected"


async def test_reconcile_applies_error_events_missed_by_webhooks(database_url):
    """No webhook endpoint configured: `reconcile` pulls the error events and applies them."""
    from datetime import timedelta as hours_ago

    from relay.reconcile import reconcile
    from relay.sender import StripeSender

    async with Emulator(rate_limit_test=None, customers={"cus_real"}) as emulator:
        insert_usage(database_url, 1, customer="cus_ghost", prefix="ghost")
        async with running_relay(make_settings(database_url, emulator)) as relay:
            await relay.until(lambda: _accepted(database_url, 1))
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

"""Invariant 1: a usage fact is counted once at Stripe whatever crashes, retries, replays or
replicas happen. Each test injects the failure its mechanism exists for."""

import psycopg

import outbox
from relay.emulator import Emulator
from tests.support.relay import (
    accepted,
    at_least,
    insert_usage,
    make_settings,
    max_concurrent_per_lane,
    row,
    running_relay,
    state_is,
    states,
)


async def test_happy_path_counts_each_row_once(database_url: str, emulator: Emulator, settings):
    ids = insert_usage(database_url, 50, customers=10)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 50))
    assert all(emulator.counted(i) == 1 for i in ids)
    first = row(database_url, ids[0])
    assert first["attempts"] == 1 and first["accepted_at"] is not None
    assert first["stripe_request_id"].startswith("req_")
    assert first["first_attempt_at"] <= first["accepted_at"]


async def test_processed_then_dropped_is_counted_once(database_url, emulator: Emulator, settings):
    """Stripe counted the event but the answer was lost: the retry reuses the same key."""
    insert_usage(database_url, 1)
    emulator.fail_next(1, kind="drop_after_processing", path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("u1") == 1
    r = row(database_url, "u1")
    # Same key on the retry; the lost answer does not use up the budget (only the history
    # keeps it).
    assert r["attempts"] == 1 and r["key_generation"] == 0


async def test_500_then_retry_counts_once_with_new_key(database_url, emulator: Emulator, settings):
    """A cached 500 would replay forever under the same key: the generation moves on, and the
    identifier still guards against a double count."""
    insert_usage(database_url, 1)
    emulator.fail_next(1, status=500, path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("u1") == 1
    r = row(database_url, "u1")
    assert (r["attempts"], r["key_generation"]) == (2, 1)


async def test_replayed_record_usage_counts_once(database_url, emulator: Emulator, settings):
    for _ in range(2):  # the application's queue delivers the same job twice
        with psycopg.connect(database_url) as conn:
            outbox.record_usage(
                conn, event_name="api_calls", customer="cus_1", value=7, identifier="order-42"
            )
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("order-42") == 1
    assert emulator.total("api_calls", "cus_1") == 7


async def test_event_already_at_stripe_is_accepted_not_failed(database_url, emulator, settings):
    """An earlier attempt landed (e.g. before a crash wiped our outcome): 'duplicate
    identifier' means accepted."""
    import stripe

    client = stripe.StripeClient("sk_test_other", base_addresses={"api": emulator.base_url})
    client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "identifier": "u1",
            "payload": {"stripe_customer_id": "cus_1", "value": "1"},
        }
    )
    insert_usage(database_url, 1)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("u1") == 1


async def test_two_relays_send_every_row_once(database_url, emulator: Emulator):
    ids = insert_usage(database_url, 300, customers=40)
    one = make_settings(database_url, emulator, relay_id="relay-a", concurrency=8, batch_size=10)
    two = make_settings(database_url, emulator, relay_id="relay-b", concurrency=8, batch_size=10)
    async with running_relay(one) as a, running_relay(two):
        await a.until(lambda: accepted(database_url, 300), timeout=60)
    assert [i for i in ids if emulator.counted(i) != 1] == []
    with psycopg.connect(database_url) as conn:
        by_relay = dict(
            conn.execute("SELECT leased_by, count(*) FROM meter_event_outbox GROUP BY 1")
        )
    assert set(by_relay) == {"relay-a", "relay-b"}, by_relay  # both shared the work
    assert max_concurrent_per_lane(emulator) == 1
    assert emulator.stats()["concurrency_conflicts"] == 0


async def test_shutdown_releases_in_flight_rows_for_a_same_key_retry(database_url, emulator):
    """Grace 0: the in-flight call is abandoned; the row goes back to pending with its key."""
    from relay.emulator import Faults, Latency

    emulator.set_faults(Faults(latency=Latency.fixed(2000)))
    insert_usage(database_url, 1)
    settings = make_settings(database_url, emulator, shutdown_grace=0)
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "in_flight"))
    r = row(database_url, "u1")
    assert (r["state"], r["last_error_code"], r["key_generation"]) == ("pending", "shutdown", 0)
    emulator.clear_faults()
    async with running_relay(make_settings(database_url, emulator)) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("u1") == 1


async def test_graceful_shutdown_finishes_in_flight_calls(database_url, emulator):
    from relay.emulator import Faults, Latency

    emulator.set_faults(Faults(latency=Latency.fixed(2000)))  # still in flight at the stop
    insert_usage(database_url, 5, customers=5)
    settings = make_settings(database_url, emulator, shutdown_grace=10)
    async with running_relay(settings) as relay:
        await relay.until(lambda: at_least(database_url, "in_flight", 5))
    # Leaving the block set the stop signal and waited: every call finished and was recorded.
    assert states(database_url) == {"accepted": 5}


async def test_v2_stream_mode_batches_and_renews_expired_sessions(database_url, emulator):
    settings = make_settings(database_url, emulator, stripe_api_mode="v2-stream")
    insert_usage(database_url, 250, customers=3, prefix="a")
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 250))
        emulator.advance_clock(16 * 60)  # the session token has expired by now
        insert_usage(database_url, 50, customers=3, prefix="b")
        await relay.until(lambda: accepted(database_url, 300))
    # Batched: 300 events in a handful of calls (two claims may run at once and each sends
    # its own calls; the emulator refuses a call of more than 100 events).
    assert emulator.requests("POST /v2/billing/meter_event_stream", 200) <= 10
    # Renewed once: one new session. Every call that was out with the expired token got its own
    # 401 (calls run concurrently), so the 401s are at least one, not exactly one.
    assert emulator.requests("POST /v2/billing/meter_event_session") == 2
    assert emulator.requests("POST /v2/billing/meter_event_stream", 401) >= 1
    assert [i for i in range(1, 251) if emulator.counted(f"a{i}") != 1] == []
    assert [i for i in range(1, 51) if emulator.counted(f"b{i}") != 1] == []

"""Each row of the classification table (relay/stripe/classify.py), driven through the emulator."""

from datetime import UTC, datetime, timedelta

import stripe

from relay.emulator import Emulator, EmulatorConfig
from tests.support.relay import (
    TEST_KEY,
    count_is,
    insert_usage,
    make_settings,
    row,
    running_relay,
    state_is,
    states,
)


async def test_409_retries_soon_with_same_key(database_url, emulator: Emulator, settings):
    insert_usage(database_url, 1)
    emulator.fail_next(1, status=409, path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "accepted"))
    r = row(database_url, "u1")
    # A 409 means nothing of that call executed: it does not use up the retry budget.
    assert (r["attempts"], r["key_generation"], emulator.counted("u1")) == (1, 0, 1)


async def test_429_retries_and_slows_the_global_rate(database_url, emulator: Emulator, settings):
    insert_usage(database_url, 1)
    emulator.fail_next(1, status=429, path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "accepted"))
        assert relay.relay.limiter.rate < relay.relay.limiter.ceiling
    r = row(database_url, "u1")
    # A 429 comes from the rate limiter in front of the API: not an attempt of the row.
    assert (r["attempts"], r["key_generation"], emulator.counted("u1")) == (1, 0, 1)


async def test_connection_reset_retries_with_same_key(database_url, emulator: Emulator, settings):
    insert_usage(database_url, 1)
    emulator.fail_next(1, kind="reset", path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "accepted"))
    r = row(database_url, "u1")
    # The reset got no answer about the row: it does not use up the budget (invariant 12).
    assert (r["attempts"], r["key_generation"], emulator.counted("u1")) == (1, 0, 1)


async def test_other_400_fails_with_stripes_code(database_url, emulator: Emulator, settings):
    insert_usage(database_url, 1)
    emulator.advance_clock(36 * 86400)  # Stripe now sees our timestamp as too old
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "failed"))
    r = row(database_url, "u1")
    assert r["last_error_code"] == "timestamp_too_far_in_past"
    assert r["attempts"] == 1 and r["stripe_request_id"]
    assert emulator.counted("u1") == 0


async def test_idempotency_error_fails_loudly(database_url, emulator: Emulator, settings):
    """Same key, different parameters: a bug on our side, never retried."""
    client = stripe.StripeClient(TEST_KEY, base_addresses={"api": emulator.base_url})
    client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "identifier": "someone-else",
            "payload": {"stripe_customer_id": "cus_9", "value": "9"},
        },
        {"idempotency_key": "u1"},
    )
    insert_usage(database_url, 1)
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "failed"))
    assert row(database_url, "u1")["last_error_code"] == "idempotency_error"


async def test_401_pauses_sending_without_burning_attempts(database_url, emulator, settings):
    insert_usage(database_url, 1)
    emulator.fail_next(3, status=401, path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "accepted"))
    r = row(database_url, "u1")
    assert r["attempts"] == 1  # three 401s, none counted
    assert emulator.counted("u1") == 1


async def test_revoked_key_keeps_rows_pending_and_not_ready(database_url):
    insert_usage(database_url, 3, customers=3)
    config = EmulatorConfig(api_keys={"sk_test_valid"}, rate_limit_test=None)
    with Emulator(config) as emulator:
        settings = make_settings(database_url, emulator, stripe_api_key="sk_test_revoked")
        async with running_relay(settings) as relay:
            # The 401 flips readiness before the claimed rows' outcome is written: wait for both.
            await relay.until(lambda: _not_ready_and_all_pending(relay, database_url))
    with_attempts = row(database_url, "u1")
    assert with_attempts["attempts"] == 0 and with_attempts["first_attempt_at"] is None


async def _not_ready_and_all_pending(relay, database_url) -> bool:
    return not relay.relay.state.auth_ok and states(database_url) == {"pending": 3}


async def test_local_refusals_make_no_call(database_url, emulator: Emulator, settings):
    import psycopg

    old = datetime.now(UTC) - timedelta(days=35, minutes=5)
    with psycopg.connect(database_url) as conn:
        # Recorded 34 days ago for usage 35 days ago (valid then), never sent since.
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value,"
            " occurred_at, created_at) VALUES ('old', 'api_calls', 'cus_1', 1, %s, %s)",
            (old, old + timedelta(days=1)),
        )
        # First attempted 21 h ago, outcome never confirmed: a resend could double-count.
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value,"
            " attempts, first_attempt_at) VALUES ('stale', 'api_calls', 'cus_2', 1, 3,"
            " now() - interval '21 hours')"
        )
    async with running_relay(settings) as relay:
        await relay.until(lambda: count_is(database_url, "failed", 2))
    assert row(database_url, "old")["last_error_code"] == "timestamp_too_far_in_past"
    stale = row(database_url, "stale")
    assert stale["last_error_code"] == "dedup_window_expired"
    assert "double-count" in stale["last_error_message"]
    assert emulator.requests("/v1/billing/meter_events") == 0

"""Sends that go wrong or must wait: every row leaves with an outcome, retries keep their key."""

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import outbox
from relay.core.errors import ServiceDied
from relay.db import operations as ops
from tests.support.relay import (
    accepted,
    code_is,
    count_is,
    insert_usage,
    make_settings,
    row,
    running_relay,
    state_is,
)


async def test_unexpected_send_error_releases_the_row_and_stops_the_relay(
    database_url, emulator, settings
):
    """An exception the sender does not classify is a bug: the row is released (not stranded
    in_flight, same key: its outcome is unknown) and the relay stops (exit 1); the restarted
    relay sends the row."""
    insert_usage(database_url, 1)
    with pytest.raises(ServiceDied, match="executor"):
        async with running_relay(settings) as relay:

            async def broken(row):
                raise RuntimeError("payload read failed")

            relay.relay.sender.send = broken
            await asyncio.wait_for(relay.stop.wait(), 10)
    r = row(database_url, "u1")
    assert (r["state"], r["last_error_code"], r["attempts"]) == ("pending", "relay_error", 1)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    r = row(database_url, "u1")
    assert (r["attempts"], r["key_generation"]) == (2, 0)  # same key: outcome was unknown
    assert emulator.counted("u1") == 1


async def test_forced_retry_is_actually_sent(database_url, emulator, settings, db):
    insert_usage(database_url, 1)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', attempts = 3,"
        " last_error_code = 'dedup_window_expired', first_attempt_at = now() - interval '21h'"
    )

    requeued, _ = ops.retry(db, identifier="u1", code=None, force=True, window_hours=20)
    assert requeued == ["u1"]
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert emulator.counted("u1") == 1


async def test_usage_a_few_minutes_ahead_waits_instead_of_failing(database_url, emulator, db):
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, occurred_at)"
        " VALUES ('soon', 'api_calls', 'cus_1', 1, now() + interval '4 minutes 50 seconds')"
    )
    async with running_relay(make_settings(database_url, emulator)) as relay:
        await relay.until(lambda: code_is(database_url, "soon", "timestamp_in_future"))
    r = row(database_url, "soon")
    assert (r["state"], r["attempts"]) == ("pending", 0)
    assert r["available_at"] > datetime.now(UTC) + timedelta(seconds=30)
    assert emulator.requests("/v1/billing/meter_events") == 0


async def test_outcomes_are_written_while_an_application_cancel_is_uncommitted(
    database_url, emulator, settings
):
    """The status counters must not make the relay wait on an application's transaction."""
    insert_usage(database_url, 2, customers=2)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 2))
        with psycopg.connect(database_url) as app:
            outbox.cancel_usage(app, identifier="u1")  # uncommitted: holds its locks
            insert_usage(database_url, 1, customer="cus_new", prefix="fresh")
            await relay.until(lambda: state_is(database_url, "fresh1", "accepted"), timeout=10)
            app.rollback()


async def _calls_at_least(emulator, n: int) -> bool:
    return emulator.requests("/v1/billing/meter_events") >= n


@pytest.mark.parametrize("mode", ["503", "reset"])
async def test_an_outage_longer_than_the_retry_budget_fails_no_row(database_url, emulator, mode):
    """Invariant 12: calls that never got an answer about the row (connection resets,
    503s in front of the API) do not use up its attempts; rows wait out the outage (backoff
    capped, until the dedup window) and are then sent."""
    insert_usage(database_url, 2, customers=2)
    emulator.start_outage(3600, mode=mode)
    settings = make_settings(database_url, emulator, max_attempts=2)
    async with running_relay(settings) as relay:
        # Three times the budget of both rows, all refused by the outage.
        await relay.until(lambda: _calls_at_least(emulator, 12), timeout=30)
        # The emulator counts a call before its row's outcome is written: wait for both rows
        # (of two) to be pending between calls at once. A failed row never is: the wait times out.
        await relay.until(lambda: count_is(database_url, "pending", 2), timeout=30)
        emulator.end_outage()
        await relay.until(lambda: accepted(database_url, 2), timeout=30)
    assert row(database_url, "u1")["attempts"] == 1

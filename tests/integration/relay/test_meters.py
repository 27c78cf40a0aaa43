"""Meters as a Stripe account has them: rows are sent with their meter's payload keys, held
(pending, no attempt, no call) while Stripe would drop them, and released within one refresh
after the meter becomes usable. Every test runs in v1 and v2-stream."""

import asyncio
from typing import Any

import aiohttp
import psycopg
import pytest
import stripe

from relay.core.config import Settings
from relay.db import operations as ops
from relay.emulator import Emulator, EmulatorConfig, Meter
from relay.server.http_server import make_app
from tests.support.console import listening, served
from tests.support.relay import (
    TEST_KEY,
    RunningRelay,
    accepted,
    count_is,
    make_settings,
    row,
    running_relay,
    states,
)

MODES = ["v1", "v2-stream"]
CLIENTS = [("v1", "lean"), ("v1", "sdk"), ("v2-stream", "lean"), ("v2-stream", "sdk")]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        meters=(
            Meter("api_calls"),
            Meter("tokens", customer_key="customer_id", value_key="n"),
            Meter("gauge", event_time_window="hour"),
            Meter("retired", active=False),
        ),
    )


def record(
    database_url: str,
    event_name: str,
    n: int,
    *,
    prefix: str = "m",
    dimensions: dict[str, str] | None = None,
    account: str | None = None,
) -> list[str]:
    """n rows of value g (1..n) for cus_1, through the SQL function."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage(%s, 'cus_1', g, %s || g, NULL, %s::jsonb,"
            " stripe_account => %s) FROM generate_series(1, %s) g",
            (event_name, prefix, psycopg.types.json.Jsonb(dimensions or {}), account, n),
        )
    return [f"{prefix}{g}" for g in range(1, n + 1)]


def stripe_client(emulator: Emulator) -> stripe.StripeClient:
    """The client the relay's webhook endpoint fetches full events with."""
    return stripe.StripeClient(
        TEST_KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0
    )


def settings_for(database_url: str, emulator: Emulator, mode: str, **extra: Any) -> Settings:
    extra.setdefault("meter_refresh_seconds", 60)
    return make_settings(database_url, emulator, stripe_api_mode=mode, **extra)


async def first_read(relay: RunningRelay) -> None:
    """Wait until the relay's first meter read (at start, before traffic) is done."""
    refresh = relay.relay.meter_refresh
    assert refresh is not None
    async with refresh.refreshed:
        await asyncio.wait_for(refresh.refreshed.wait_for(lambda: refresh.refreshes >= 1), 20)


async def refresh_pass(relay: RunningRelay) -> None:
    """One refresh pass now (the loop runs the same every OUTBOX_METER_REFRESH_SECONDS)."""
    refresh = relay.relay.meter_refresh
    assert refresh is not None
    await refresh.refresh()


async def held(database_url: str, identifiers: list[str], code: str) -> bool:
    return all(row(database_url, i)["last_error_code"] == code for i in identifiers)


def meter_event_calls(emulator: Emulator) -> int:
    return emulator.requests("/v1/billing/meter_events") + emulator.requests(
        "/v2/billing/meter_event_stream"
    )


@pytest.mark.parametrize(("mode", "client"), CLIENTS)
async def test_custom_customer_and_value_keys_billed_exactly(
    database_url: str, emulator: Emulator, mode: str, client: str
) -> None:
    identifiers = record(database_url, "tokens", 20, dimensions={"region": "eu"})
    settings = settings_for(database_url, emulator, mode, stripe_client=client)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 20))
    emulator.flush_error_reports()
    ledger = emulator.ledger()
    assert ledger.rejected == []
    assert emulator.total("tokens", "cus_1") == sum(range(1, 21))
    sent = {e.identifier: e.payload for e in ledger.events}
    assert sent[identifiers[0]] == {"customer_id": "cus_1", "n": "1", "region": "eu"}


@pytest.mark.parametrize("mode", MODES)
async def test_event_name_without_meter_held_then_billed_after_creation(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    identifiers = record(database_url, "new_feature", 5)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_missing"))
        first = row(database_url, identifiers[0])
        assert (first["state"], first["attempts"], first["first_attempt_at"]) == (
            "pending",
            0,
            None,
        )
        assert meter_event_calls(emulator) == 0
        emulator.add_meter(Meter("new_feature"))
        await refresh_pass(relay)  # the next one, as the interval (60 s here) would run
        await relay.until(lambda: accepted(database_url, 5))
    assert emulator.total("new_feature", "cus_1") == 15


@pytest.mark.parametrize("mode", MODES)
async def test_inactive_meter_held_until_reactivated(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    identifiers = record(database_url, "retired", 3)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_inactive"))
        assert meter_event_calls(emulator) == 0
        emulator.reactivate_meter("mtr_retired")
        await refresh_pass(relay)
        await relay.until(lambda: accepted(database_url, 3))
    assert emulator.total("retired", "cus_1") == 6


@pytest.mark.parametrize("mode", MODES)
async def test_pre_aggregated_meter_held(database_url: str, emulator: Emulator, mode: str) -> None:
    identifiers = record(database_url, "gauge", 4)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_pre_aggregated"))
    assert meter_event_calls(emulator) == 0
    assert "last event per hour" in row(database_url, identifiers[0])["last_error_message"]


@pytest.mark.parametrize("mode", MODES)
async def test_held_row_is_not_claimed_again_before_the_next_refresh(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    [identifier] = record(database_url, "new_feature", 1)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, [identifier], "meter_missing"))
        with psycopg.connect(database_url) as conn:
            wait = conn.execute(
                "SELECT extract(epoch FROM available_at - now()) FROM meter_event_outbox"
                " WHERE identifier = %s",
                (identifier,),
            ).fetchone()
        # Two refresh intervals (60 s) away: a look costs two writes (claim, outcome), so at
        # most one write per held row per interval.
        assert wait is not None and wait[0] > 110


@pytest.mark.parametrize("mode", MODES)
async def test_dimension_named_like_a_meter_key_is_held(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    identifiers = record(database_url, "tokens", 2, dimensions={"n": "shadow"})
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_key_collision"))
    assert meter_event_calls(emulator) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_restricted_key_that_cannot_list_meters_keeps_sending(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    key = "rk_test_cannot_read_meters"
    emulator.set_restricted_keys({key})
    record(database_url, "api_calls", 5)
    settings = settings_for(database_url, emulator, mode, stripe_api_key=key)
    async with running_relay(settings) as relay:
        await first_read(relay)
        while not relay.relay.state.started:
            await relay.next_flush(timeout=0.1)
        # A 403 on a read is "may not read meters", never "the key is refused" (a 401).
        assert relay.relay.auth.paused == {} and relay.relay.state.auth_ok
        await relay.until(lambda: accepted(database_url, 5))
    assert emulator.total("api_calls", "cus_1") == 15
    with psycopg.connect(database_url) as conn:
        outcome = conn.execute(
            "SELECT outcome FROM meter_event_outbox_meter_reads WHERE stripe_account = ''"
        ).fetchone()
    assert outcome == ("forbidden",)


@pytest.mark.parametrize("mode", MODES)
async def test_override_names_the_keys_for_a_key_that_cannot_read_meters(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    key = "rk_test_cannot_read_meters"
    emulator.set_restricted_keys({key})
    record(database_url, "tokens", 3)
    settings = settings_for(
        database_url, emulator, mode, stripe_api_key=key, meter_keys="tokens=customer_id:n"
    )
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 3))
    emulator.flush_error_reports()
    assert emulator.ledger().rejected == []
    assert emulator.total("tokens", "cus_1") == 6


async def test_readyz_not_ready_with_a_refused_key_before_any_row(
    database_url: str, emulator: Emulator
) -> None:
    emulator.state.api_keys = {"sk_test_the_right_one"}
    settings = settings_for(database_url, emulator, "v1", stripe_api_key="sk_test_wrong")
    async with running_relay(settings) as relay:
        await first_read(relay)
        while not relay.relay.state.started:
            await relay.next_flush(timeout=0.1)
        assert relay.relay.state.auth_ok is False
        assert states(database_url) == {}
    assert meter_event_calls(emulator) == 0


async def test_held_rows_visible_in_status_list_inspect_console_and_metrics(
    database_url: str, emulator: Emulator
) -> None:
    identifiers = record(database_url, "new_feature", 3)
    async with running_relay(settings_for(database_url, emulator, "v1")) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_missing"))
    with ops.connect(database_url) as conn:
        data = ops.status(conn)
        listed = ops.list_rows(conn, code="meter_missing")
        story = ops.inspect(conn, identifiers[0])
    [group] = data["held_for_meter"]
    assert (group["event_name"], group["code"], group["rows"]) == (
        "new_feature",
        "meter_missing",
        3,
    )
    assert "create a meter" in group["what_to_do"]
    buckets = data["unsent"]["buckets"]
    assert buckets["held_meter"]["rows"] == 3  # held rows are not "retrying"
    assert buckets["retrying"]["rows"] == buckets["retrying_no_answer"]["rows"] == 0
    assert {r["identifier"] for r in listed} == set(identifiers)
    assert story is not None and story["summary"].startswith("held, not sent (meter_missing)")
    async with (
        served(database_url, emulator) as app,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{app.url}/console") as response:
            page = await response.text()
        async with session.get(f"{app.url}/metrics") as response:
            metrics_text = await response.text()
    assert "new_feature" in page and "meter_missing" in page and "create a meter" in page
    assert 'outbox_relay_held_rows{reason="meter_missing"} 3.0' in metrics_text


@pytest.mark.parametrize("mode", MODES)
async def test_error_report_naming_a_meter_problem_rereads_the_meters_at_once(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    secret = "whsec_meters_suite"
    settings = settings_for(database_url, emulator, mode, stripe_webhook_secret=secret)
    async with running_relay(settings) as relay:
        app = make_app(relay.relay, relay.relay.store, stripe_client(emulator), secret)
        async with listening(app) as url:
            await first_read(relay)
            emulator.set_webhook(url + "/webhooks/stripe", secret)
            # Behind the relay's back (its next read is 60 s away): the meter is re-keyed.
            emulator.add_meter(Meter("tokens", id="mtr_tokens2", customer_key="account_ref"))
            identifiers = record(database_url, "tokens", 2)
            await relay.until(lambda: accepted(database_url, 2))
            refresh = relay.relay.meter_refresh
            assert refresh is not None
            async with refresh.refreshed:
                before = refresh.refreshes
                await asyncio.to_thread(emulator.flush_error_reports)
                await asyncio.wait_for(
                    refresh.refreshed.wait_for(lambda: refresh.refreshes > before), 20
                )
            await relay.until(lambda: count_is(database_url, "rejected", 2))
    catalogue = relay.relay.meters
    assert catalogue is not None
    assert catalogue.verdict("", "tokens").keys == ("account_ref", "value")
    assert row(database_url, identifiers[0])["last_error_code"] == (
        "meter_event_no_customer_defined"
    )

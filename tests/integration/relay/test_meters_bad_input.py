"""Bad input around the meter catalogue: each case ends in a clear log line and a safe state
(held, or sent as before the catalogue), never a crash, a hot loop or a row sent with the
wrong keys. v1 and v2-stream."""

import psycopg
import pytest

from relay.db.store import SyncStore
from relay.emulator import Emulator, EmulatorConfig, Meter
from tests.integration.relay.test_meters import (
    MODES,
    held,
    meter_event_calls,
    record,
    refresh_pass,
    settings_for,
)
from tests.support.relay import accepted, row, running_relay

RESTRICTED = "rk_test_cannot_read_meters"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        meters=(Meter("api_calls"), Meter("tokens", customer_key="customer_id", value_key="n")),
    )


def reads(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {r.account: r.outcome for r in SyncStore(conn).meter_reads()}


@pytest.mark.parametrize("fault", ["malformed", "truncated", "endless"])
@pytest.mark.parametrize("mode", MODES)
async def test_bad_meter_list_keeps_the_last_known_catalogue(
    database_url: str, emulator: Emulator, mode: str, fault: str
) -> None:
    settings = settings_for(database_url, emulator, mode, read_rate_limit=1000)
    async with running_relay(settings) as relay:
        await refresh_pass(relay)  # a good read first
        emulator.set_meter_list_fault(fault)
        await refresh_pass(relay)
        assert reads(database_url)[""] == "failed"
        record(database_url, "tokens", 4)
        await relay.until(lambda: accepted(database_url, 4))
    emulator.flush_error_reports()
    assert emulator.ledger().rejected == []  # sent with the meter's keys, as last known
    assert emulator.total("tokens", "cus_1") == 10
    # one read per pass: no retry storm on a bad answer (endless: 2 pages, then refused)
    assert emulator.requests("/v1/billing/meters") <= 2 + 2 * (1 + (fault == "endless"))


@pytest.mark.parametrize("mode", MODES)
async def test_bad_meter_list_with_nothing_known_sends_as_before(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    emulator.set_meter_list_fault("malformed")
    record(database_url, "api_calls", 3)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: accepted(database_url, 3))
    assert reads(database_url)[""] == "failed"
    assert emulator.total("api_calls", "cus_1") == 6


@pytest.mark.parametrize("mode", MODES)
async def test_huge_meter_list_is_read_whole(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    for i in range(2500):
        emulator.add_meter(Meter(f"feature_{i:04}", customer_key=f"c{i}"))
    record(database_url, "feature_0007", 2)
    settings = settings_for(database_url, emulator, mode, read_rate_limit=1000)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 2))
    with psycopg.connect(database_url) as conn:
        assert len(SyncStore(conn).load_meters()) == 2502
    events = emulator.ledger().events
    assert len(events) == 2 and all(e.payload["c7"] == "cus_1" for e in events)


@pytest.mark.parametrize("mode", MODES)
async def test_two_active_meters_for_one_event_name_hold_the_rows(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    emulator.add_meter(Meter("tokens", id="mtr_tokens_again", customer_key="other"), replace=False)
    identifiers = record(database_url, "tokens", 2)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_conflict"))
    assert meter_event_calls(emulator) == 0
    assert "mtr_tokens_again" in row(database_url, identifiers[0])["last_error_message"]


@pytest.mark.parametrize("mode", MODES)
async def test_meter_rekeyed_while_rows_flow(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        record(database_url, "tokens", 3, prefix="before")
        await relay.until(lambda: accepted(database_url, 3))
        # Meters are immutable: a new key is a new meter for the event name.
        emulator.deactivate_meter("mtr_tokens")
        emulator.add_meter(Meter("tokens", id="mtr_tokens2", customer_key="account_ref"))
        await refresh_pass(relay)
        record(database_url, "tokens", 3, prefix="after")
        await relay.until(lambda: accepted(database_url, 6))
    emulator.flush_error_reports()
    assert emulator.ledger().rejected == []
    after = [e for e in emulator.ledger().events if e.identifier.startswith("after")]
    assert all(e.payload["account_ref"] == "cus_1" for e in after)


@pytest.mark.parametrize("mode", MODES)
async def test_meter_deactivated_then_added_while_rows_wait(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        emulator.deactivate_meter("mtr_api_calls")
        await refresh_pass(relay)
        identifiers = record(database_url, "api_calls", 3)
        await relay.until(lambda: held(database_url, identifiers, "meter_inactive"))
        emulator.remove_meter("mtr_api_calls")
        await refresh_pass(relay)
        await relay.until(lambda: held(database_url, identifiers, "meter_missing"))
        emulator.add_meter(Meter("api_calls", id="mtr_api_calls_v2"))
        await refresh_pass(relay)
        await relay.until(lambda: accepted(database_url, 3))
    assert emulator.total("api_calls", "cus_1") == 6


@pytest.mark.parametrize("mode", MODES)
async def test_event_name_of_100_characters(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    name = "e" * 100
    identifiers = record(database_url, name, 2)
    async with running_relay(settings_for(database_url, emulator, mode)) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_missing"))
        emulator.add_meter(Meter(name, customer_key="k" * 100))
        await refresh_pass(relay)
        await relay.until(lambda: accepted(database_url, 2))
    assert emulator.total(name, "cus_1") == 3
    with psycopg.connect(database_url) as conn:
        assert (SyncStore(conn).event_names_in_use()) == [("", name)]


@pytest.mark.parametrize("mode", MODES)
async def test_catalogue_table_edited_by_hand(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    settings = settings_for(database_url, emulator, mode)
    async with running_relay(settings) as relay:  # fills the table from Stripe
        await refresh_pass(relay)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE meter_event_outbox_meters SET status = 'inactive' WHERE meter_id = 'mtr_tokens'"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE meter_event_outbox_meters SET status = 'archived'")
    # Stripe cannot be read now: the (edited) table is the last known catalogue.
    emulator.set_restricted_keys({RESTRICTED})
    identifiers = record(database_url, "tokens", 2)
    restricted = settings_for(database_url, emulator, mode, stripe_api_key=RESTRICTED)
    async with running_relay(restricted) as relay:
        await relay.until(lambda: held(database_url, identifiers, "meter_inactive"))
    assert meter_event_calls(emulator) == 0
    # Readable again: the next read replaces the edit and the rows flow with the right keys.
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 2))
    emulator.flush_error_reports()
    assert emulator.ledger().rejected == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_row_held_just_before_its_meter_appears_is_released_by_that_refresh(
    database_url: str, emulator: Emulator, mode: str
) -> None:
    """The relay holds a row for its missing meter; the meter appears and a refresh pass runs
    while that hold is still on its way to the table (the outcome batch waits to fill). The
    pass waits for it to be written and releases it: the row flows now, not a hold later (the
    release once missed it: the row was in flight, so not held yet, when the pass looked)."""
    settings = settings_for(database_url, emulator, mode, outcome_flush_delay=1.0)
    async with running_relay(settings) as relay:
        emulator.remove_meter("mtr_api_calls")
        await refresh_pass(relay)
        meters = relay.relay.meters
        assert meters is not None

        async def holding() -> bool:
            return meters.holding.get(("", "api_calls")) == "meter_missing"

        record(database_url, "api_calls", 1)
        await relay.until(holding, timeout=20)  # decided and recorded, not written yet
        emulator.add_meter(Meter("api_calls", id="mtr_api_calls_v2"))
        await refresh_pass(relay)
        await relay.until(lambda: accepted(database_url, 1), timeout=20)

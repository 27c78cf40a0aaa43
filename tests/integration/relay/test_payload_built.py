"""The relay builds what Stripe receives as `payload` from the row's dimensions, customer and
value. The table's stored generated `payload` column is gone (outbox_0033: about 70 bytes of WAL
per recorded fact, docs/benchmarks.md); relays of earlier releases read `o.payload`, which is now
the function `payload(meter_event_outbox)` over the same columns. Both give byte for byte the
same text (the v2 stream body splices it as is)."""

from decimal import Decimal

import psycopg
import pytest

import outbox
from relay.db import operations
from relay.db.store import FIRST_LANE, SyncStore
from relay.emulator import Emulator
from tests.helpers import rows
from tests.support.relay import make_settings, running_relay, state_is

FACTS = [  # identifier, customer, value, dimensions
    ("p1", "cus_1", Decimal(3), {}),
    ("p2", "cus_2", Decimal(12), {"region": "eu", "tier": "gold"}),
    ("p3", 'cus_"q"', Decimal(0), {"z": "é ünïcode", "a": '\\ and "quotes"'}),
]


def record(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for identifier, customer, value, dimensions in FACTS:
            outbox.record_usage(
                conn,
                event_name="api_calls",
                customer=customer,
                value=value,
                identifier=identifier,
                dimensions=dimensions,
            )


def test_the_lease_builds_the_payload_earlier_releases_read(
    database_url: str, db: psycopg.Connection
) -> None:
    record(database_url)
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 10, exclusive=False)
    claimed = store.claim(
        walked.ids, fill=10, exclusive=False, relay_id="r", lease_seconds=30, one_walk=True
    )
    # an earlier release's claim reads `o.payload::text` (its RETURNING): the function now
    column = dict(rows(db, "SELECT identifier, o.payload::text FROM meter_event_outbox o"))
    assert {c.identifier: c.payload_json for c in claimed} == column
    p2 = next(c for c in claimed if c.identifier == "p2")
    assert p2.payload == {
        "region": "eu",
        "tier": "gold",
        "stripe_customer_id": "cus_2",
        "value": "12",
    }


@pytest.mark.parametrize("api", ["v1", "v2-stream"])
async def test_a_relay_sends_and_inspect_shows_without_the_payload_column(
    database_url: str, db: psycopg.Connection, emulator: Emulator, api: str
) -> None:
    """With no `payload` column, facts are sent with their payload, and `inspect` shows it."""
    assert rows(
        db,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'meter_event_outbox'::regclass"
        " AND attname = 'payload' AND NOT attisdropped",
    ) == [(0,)]
    record(database_url)
    settings = make_settings(database_url, emulator, stripe_api_mode=api)
    async with running_relay(settings) as relay:
        for identifier, *_ in FACTS:
            await relay.until(lambda i=identifier: state_is(database_url, i, "accepted"))
    sent = {e.identifier: e.payload for e in emulator.ledger().events}
    for identifier, customer, value, dimensions in FACTS:
        expected = {**dimensions, "stripe_customer_id": customer, "value": str(int(value))}
        assert sent[identifier] == expected
        found = operations.inspect(db, identifier)
        assert found is not None and found["payload"] == expected

"""Hostile review of the v2 claim since the lease table (outbox_0020) and the top-up cursor
(outbox_0026, relay.core.top_up): a leased row stays its lane's head, so a v2 relay tops up
even when its walk found no head; and the cursor never carries a time psycopg cannot load."""

from typing import Any

from relay.core.top_up import TopUp
from relay.db.store import SyncStore
from tests.support.relay import insert_usage, make_settings, running_relay, states


async def _accepted(url: str, n: int) -> bool:
    return states(url).get("accepted", 0) == n


async def test_v2_rows_behind_a_leased_head_are_sent(database_url, emulator, db) -> None:
    """A relay that died holding the head of the only lane (its lease still live): the lane's
    other 19 rows are due and unleased, v2 needs no exclusivity per lane, and a live relay
    with capacity should send them (docs/design.md: 'a relay claims while it has capacity and
    rows are due'). Before outbox_0020 the dead relay's row went `in_flight` with its deadline
    in available_at, so the lane's next row became its head and flowed."""
    insert_usage(database_url, 20)
    db.execute(
        "INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,"
        " first_claimed_at, customer, event_name, stripe_account, action)"
        " SELECT id, gen_random_uuid(), 'dead-relay', now() + interval '1 hour', now(),"
        " customer, event_name, stripe_account, action FROM meter_event_outbox"
        " WHERE identifier = 'u1'"
    )
    settings = make_settings(database_url, emulator, stripe_api_mode="v2-stream")
    async with running_relay(settings) as relay:
        await relay.until(lambda: _accepted(database_url, 19), timeout=20)


def test_a_row_due_before_year_1_does_not_fail_the_claim(database_url: str, db) -> None:
    """available_at is not checked by a constraint; a row written with a date before year 1
    (direct SQL) is due and the oldest, so every top-up from the start locks it. Before the
    cursor the claim did not return available_at and the row was sent."""
    insert_usage(database_url, 3)
    db.execute(
        "UPDATE meter_event_outbox SET available_at = '0044-03-15 BC' WHERE identifier = 'u2'"
    )
    how: Any = {"fill": 10, "exclusive": False, "relay_id": "r", "lease_seconds": 600}
    claimed = SyncStore(db).claim([], top_up=TopUp(), **how)
    assert {r.identifier for r in claimed} == {"u1", "u2", "u3"}

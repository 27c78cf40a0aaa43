"""The claim pipeline: read-only walks, claims in the background, concurrent outcome writes.

Regression tests for what a review of that pipeline found; each fails without its fix.
"""

import asyncio
from typing import Any

import relay.completer
from relay.emulator import Emulator
from relay.rows import Claimed
from relay.store import FIRST_LANE, Store, SyncStore
from tests.relay.conftest import insert_usage, make_settings, row, running_relay, states

LANE_ROW = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, available_at)"
    " VALUES (%s, 'api_calls', %s, 1, now() - make_interval(mins => %s)) RETURNING id"
)


def test_claim_takes_the_current_head_of_each_lane_once(database_url: str, db) -> None:
    """A walk's choice is stale by the time it is claimed: a row committed since then may be
    the lane's head, and a wrapped second walk may name it too. Still one row per lane."""
    db.execute(LANE_ROW, ("b1", "cus_b", 1))
    db.execute(LANE_ROW, ("a1", "cus_a", 1))
    db.commit()
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 10, exclusive=True)
    assert len(walked.ids) == 2
    (b0,) = db.execute(LANE_ROW, ("b0", "cus_b", 2)).fetchone()  # older: the new head
    db.commit()
    ids = [*walked.ids, b0]  # what a second, later walk would add
    claimed = store.claim(ids, fill=0, exclusive=True, relay_id="r", lease_seconds=30)
    db.commit()
    assert sorted(r.identifier for r in claimed) == ["a1", "b0"]  # one head per lane


async def test_a_crashing_outcome_write_stops_the_relay(database_url, emulator, monkeypatch):
    """A bug in a flush must stop the relay (the supervisor restarts it), not leave it running
    with outcomes that are never recorded."""
    real, calls = relay.completer.report_batch, []

    def broken(batch: list[Any], written: set[int]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("bug while reporting a batch")
        real(batch, written)

    monkeypatch.setattr(relay.completer, "report_batch", broken)
    insert_usage(database_url, 1)
    async with running_relay(make_settings(database_url, emulator)) as running:
        await asyncio.wait_for(running.stop.wait(), 10)
    assert running.relay.capacity.held == 0  # the written batch was accounted for
    assert row(database_url, "u1")["state"] == "accepted"  # written before the crash


async def test_rows_claimed_during_shutdown_are_handed_back_unsent(
    database_url: str, emulator: Emulator
) -> None:
    """SIGTERM means stop claiming: a claim that completes after it sends nothing, and its rows
    go back to pending without using up an attempt."""
    entered, release = asyncio.Event(), asyncio.Event()

    class SlowClaim(Store):
        async def claim(self, ids: Any, **params: Any) -> list[Claimed]:
            entered.set()
            await release.wait()
            return await super().claim(ids, **params)

    insert_usage(database_url, 3, customers=3)
    settings = make_settings(database_url, emulator)
    async with running_relay(settings, SlowClaim) as running:
        await asyncio.wait_for(entered.wait(), 10)
        running.stop.set()  # SIGTERM while the claim statement runs
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(running.task, 10)
    assert emulator.requests("POST /v1/billing/meter_events") == 0
    assert states(database_url) == {"pending": 3}
    r = row(database_url, "u1")
    assert (r["attempts"], r["last_error_code"], r["lease_token"]) == (0, "shutdown", None)

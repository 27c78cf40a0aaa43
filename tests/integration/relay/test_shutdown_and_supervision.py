"""Shutdown and supervision: rows go back unsent or with their key, a dead service stops the
relay."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import structlog.testing

import relay.pipeline.completer
import relay.pipeline.maintenance
import relay.stripe.rate_share
from relay.core.errors import ServiceDied
from relay.core.rows import Claimed, Outcome
from relay.db.queries import Statement
from relay.db.store import Store
from relay.emulator import Emulator
from tests.support.relay import (
    insert_usage,
    make_settings,
    row,
    running_relay,
    states,
)


async def test_a_crashing_outcome_write_stops_the_relay(database_url, emulator, monkeypatch):
    """A bug in a flush must stop the relay (the supervisor restarts it), not leave it running
    with outcomes that are never recorded."""
    real, calls = relay.pipeline.completer.report_batch, []

    def broken(batch: list[Any], written: set[int], now: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("bug while reporting a batch")
        real(batch, written, now)

    monkeypatch.setattr(relay.pipeline.completer, "report_batch", broken)
    insert_usage(database_url, 1)
    with pytest.raises(ServiceDied, match="completer"):
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


async def test_a_service_that_dies_stops_the_relay_with_one_log_line(
    database_url: str, emulator: Emulator, monkeypatch
) -> None:
    """Any service, not only the outcome writer: here the counter folding."""

    async def broken(store: Any, interval: float, state: Any) -> None:
        raise RuntimeError("fold bug")

    monkeypatch.setattr(relay.pipeline.maintenance, "fold_counts", broken)
    with structlog.testing.capture_logs() as logs, pytest.raises(ServiceDied, match="fold_counts"):
        async with running_relay(make_settings(database_url, emulator)) as running:
            await asyncio.wait_for(running.stop.wait(), 10)  # then it drains and exits 1
    died = [e for e in logs if e["event"] == "service_died"]
    assert [(e["service"], e["error"]) for e in died] == [
        ("fold_counts", "RuntimeError('fold bug')")
    ]


async def test_a_failing_startup_step_leaves_no_task_behind(
    database_url: str, emulator: Emulator, monkeypatch
) -> None:
    """Services started before the rate share's join are stopped when the join fails."""

    async def failing_join(self: Any, stop: asyncio.Event) -> None:
        raise RuntimeError("cannot join")

    monkeypatch.setattr(relay.stripe.rate_share.RateShare, "join", failing_join)
    with pytest.raises(RuntimeError, match="cannot join"):
        async with running_relay(make_settings(database_url, emulator)):
            pass
    services = {
        "completer",
        "executor",
        "database_watch",
        "fold_counts",
        "listener",
        "heartbeat",
        "producer",
    }
    assert [t for t in asyncio.all_tasks() if t.get_name() in services] == []


class Unreachable(Store):
    """A database that stops answering (a partition: statements hang, nothing errors)."""

    down = False

    async def all(self, statement: Statement[Any]) -> list[Any]:
        if self.down:
            await asyncio.Event().wait()
        return await super().all(statement)

    async def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        if self.down:  # a transaction of its own, not through `all`
            await asyncio.Event().wait()
        return await super().record_outcomes(batch, relay_id)


async def test_shutdown_with_the_database_down_ends_within_the_grace_period(database_url, emulator):
    """Shutdown is bounded even with the database gone: an outcome that cannot be written, a
    share that cannot be given back and a producer stuck in a statement do not hold the relay
    past OUTBOX_SHUTDOWN_GRACE (the row is safe: its lease expires and the retry replays
    Stripe's answer)."""
    insert_usage(database_url, 1)
    held = emulator.hold("/v1/billing/meter_events")
    grace = 1.0
    settings = make_settings(database_url, emulator, shutdown_grace=grace)
    async with running_relay(settings, store=Unreachable) as running:
        await held.wait_arrived_async()
        running.relay.store.down = True  # type: ignore[attr-defined]
        held.release()  # Stripe answers; the outcome write will hang
        running.stop.set()
        # The relay's own bound, with a margin for cancelling its tasks; the fixture would
        # otherwise wait grace + 10 s.
        await asyncio.wait_for(running.task, grace + 4)
    assert row(database_url, "u1")["state"] == "in_flight"  # re-claimable once the lease ends

"""The executor with an in-memory sender: which calls it makes, and one outcome per row."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.core.config import Settings
from relay.core.rows import Claimed, Outcome
from relay.pipeline.executor import Executor, RelayState
from relay.stripe.auth_gate import AuthGate
from relay.stripe.classify import Classified, Verdict, for_answer
from relay.stripe.rate_limit import RateLimiter
from tests.unit.rows import claimed as claimed_at_noon

ACCEPTED = Classified(Verdict.ACCEPTED)


class FakeSender:
    """Records the calls; answers with `answer` (or raises it)."""

    def __init__(self, answer: Classified | Exception = ACCEPTED) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str]]] = []

    async def send(self, row: Claimed) -> tuple[Classified, float]:
        return self._answer("v1", [row])

    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        return self._answer("stream", rows)

    def _answer(self, kind: str, rows: list[Claimed]) -> tuple[Classified, float]:
        self.calls.append((kind, [r.identifier for r in rows]))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer, 1.0


async def run(
    rows: list[Claimed], sender: FakeSender, mode: str = "v1"
) -> tuple[list[Outcome], RelayState]:
    outcomes: list[Outcome] = []
    state = RelayState()
    settings = Settings(stripe_api_mode=mode)
    gate = AuthGate(lambda ok: setattr(state, "auth_ok", ok), 1.0, 10.0)
    executor = Executor(settings, sender, RateLimiter(10**6), gate, outcomes.append)
    executor.start(rows)
    await executor.drain(5)
    return outcomes, state


def claimed(**overrides: Any) -> Claimed:
    """A row due now (the executor checks Stripe's time window against the real clock)."""
    return claimed_at_noon(**{"occurred_at": datetime.now(UTC), **overrides})


def rows(n: int, **overrides: Any) -> list[Claimed]:
    return [claimed(id=i, identifier=f"u{i}", **overrides) for i in range(1, n + 1)]


async def test_v1_makes_one_call_per_row() -> None:
    sender = FakeSender()
    outcomes, _ = await run(rows(3), sender)
    assert sorted(sender.calls) == [("v1", ["u1"]), ("v1", ["u2"]), ("v1", ["u3"])]
    assert sorted(o.state for o in outcomes) == ["accepted"] * 3


async def test_v2_stream_groups_reports_by_account_in_calls_of_at_most_100() -> None:
    sender = FakeSender()
    connected = claimed(id=999, identifier="conn", stripe_account="acct_1")
    cancel = claimed(id=1000, identifier="undo", action="cancel")  # cancels exist in v1 only
    batch = [*rows(150), connected, cancel]
    outcomes, _ = await run(batch, sender, mode="v2-stream")
    sizes = sorted((kind, len(ids)) for kind, ids in sender.calls)
    assert sizes == [("stream", 1), ("stream", 50), ("stream", 100), ("v1", 1)]
    assert len(outcomes) == 152


async def test_a_row_refused_locally_is_not_sent() -> None:
    sender = FakeSender()
    old = claimed(id=2, identifier="old", occurred_at=datetime.now(UTC) - timedelta(days=40))
    outcomes, _ = await run([old], sender)
    assert sender.calls == []
    assert [(o.state, o.code, o.called) for o in outcomes] == [
        ("failed", "timestamp_too_far_in_past", False)
    ]


async def test_a_crashing_send_releases_its_rows_as_attempts_with_an_unknown_outcome() -> None:
    outcomes, _ = await run(rows(2), FakeSender(RuntimeError("bug")), mode="v2-stream")
    assert [(o.state, o.code, o.counted, o.new_key, o.called) for o in outcomes] == [
        ("pending", "relay_error", 1, 0, True)
    ] * 2


async def test_a_401_pauses_sending() -> None:
    refused = for_answer("auth", "http_401", http_status=401)
    outcomes, state = await run(rows(1), FakeSender(refused))
    assert not state.auth_ok
    assert [(o.state, o.counted, o.code) for o in outcomes] == [("pending", 0, "api_key_refused")]
    assert outcomes[0].delay > 0


async def test_shutdown_releases_calls_still_out() -> None:
    class Hanging(FakeSender):
        async def send(self, row: Claimed) -> tuple[Classified, float]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    outcomes: list[Outcome] = []
    sender = Hanging()
    gate = AuthGate(lambda ok: None, 1.0, 10.0)
    executor = Executor(Settings(), sender, RateLimiter(10**6), gate, outcomes.append)
    executor.start(rows(1))
    await asyncio.sleep(0)
    await executor.drain(0)
    # No answer: not an attempt (invariant 12), but the call may have reached Stripe.
    assert [(o.state, o.code, o.called, o.counted) for o in outcomes] == [
        ("pending", "shutdown", False, 0)
    ]
    assert outcomes[0].reached_stripe  # so the dedup clock keeps running


async def test_a_row_the_local_checks_crash_on_waits_and_the_rest_of_its_call_goes() -> None:
    """A bug in the local checks (here: a row without a timestamp) must not leave the row
    without an outcome (its capacity held for good) nor sink the rows sharing its call."""
    broken = claimed(id=2, identifier="u2", occurred_at=None)
    outcomes, _ = await run([claimed(id=1, identifier="u1"), broken], FakeSender(), "v2-stream")
    by_row = {o.row.identifier: (o.state, o.code, o.counted, o.reached_stripe) for o in outcomes}
    assert by_row == {
        "u1": ("accepted", None, 1, True),
        "u2": ("pending", "relay_error", 0, False),
    }

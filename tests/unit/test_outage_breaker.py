"""The outage breaker against an in-memory store and an injected clock: when it opens, what it
holds back, one probe at a time on a doubling schedule, closing on an answer."""

from datetime import UTC, datetime

import pytest

from relay.db.store import OutageState
from relay.stripe.classify import Classified, Verdict, for_answer
from relay.stripe.outage import OutageBreaker, no_answer

NO_ANSWER = for_answer("no_answer")
GATEWAY = for_answer("unavailable", http_status=503)
OK = Classified(Verdict.ACCEPTED, http_status=200)


class FakeStore:
    """The breaker's statements on one in-memory row (the database's rules, simplified)."""

    def __init__(self) -> None:
        self.state = "closed"
        self.holder: str | None = None
        self.interval = 0.0
        self.calls = 0
        self.down = False
        self.closes: list[tuple[float, tuple[str, ...]]] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("database away")

    async def outage_sync(self, calls: int, failed: int, status: int | None) -> OutageState:
        self._check()
        self.calls += calls if self.state == "open" else 0
        now = datetime.now(UTC)
        return OutageState(
            self.state, now, now, "other", None, None, status, self.calls, 0, 0,
            self.interval, self.interval, self.holder, now,  # the next probe one interval ahead
        )  # fmt: skip

    async def outage_open(
        self, relay_id: str, failed: int, status: int | None, streak: float, interval: float
    ) -> bool:
        self._check()
        if self.state == "open":
            return False
        self.state, self.interval, self.calls = "open", interval, failed
        return True

    async def outage_probe(self, relay_id: str, lease_seconds: float) -> float | None:
        self._check()
        if self.state != "open" or self.holder is not None:
            return None
        self.holder = relay_id
        return self.interval

    async def outage_probe_failed(self, relay_id: str, status: int | None, cap: float) -> float:
        self._check()
        self.holder, self.interval = None, min(cap, self.interval * 2)
        return self.interval

    async def outage_close(self, relay_id: str, horizon: float, codes: tuple[str, ...]) -> int:
        self._check()
        self.state, self.holder = "closed", None
        self.closes.append((horizon, tuple(codes)))
        return 3


def breaker(store: FakeStore, clock: list[float], threshold: int = 3) -> OutageBreaker:
    return OutageBreaker(
        store, "relay-a", threshold=threshold, interval=2.0, cap=8.0, lease_seconds=30,
        clock=lambda: clock[0],
    )  # fmt: skip


async def fail(b: OutageBreaker, n: int, result: Classified = GATEWAY, first: int = 100) -> None:
    for call in range(first, first + n):
        await b.settle(call, result)


def test_only_no_answer_and_gateway_answers_count_as_an_outage() -> None:
    assert no_answer(NO_ANSWER) and no_answer(GATEWAY)
    for answered in (
        OK,
        Classified(Verdict.ACCEPTED),  # the SDK's plain success carries no status
        for_answer("auth", http_status=401),  # a refused key: the auth gate's, per account
        for_answer("auth", http_status=403),
        for_answer("rate_limited", http_status=429),
        for_answer("server_error", http_status=500),
        for_answer("invalid", http_status=400),
    ):
        assert not no_answer(answered), answered


async def test_it_opens_after_the_threshold_of_calls_in_a_row() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    await fail(b, 2)
    await b.settle(1, OK)  # an answer resets the run
    await fail(b, 2, NO_ANSWER)
    assert not b.open and store.state == "closed"
    await fail(b, 1)
    assert b.open and store.state == "open" and store.calls == 3
    assert b.claim_limit(50) == 0  # the producer claims nothing until a probe is due


async def test_off_with_a_threshold_of_zero() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock, threshold=0)
    await fail(b, 100)
    assert not b.open and await b.admit(1) is None


async def test_one_probe_at_a_time_on_a_doubling_capped_schedule() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    await fail(b, 3)
    wait = await b.admit(1)
    assert wait is not None and 2.0 <= wait <= 4.0  # until the probe, plus jitter
    intervals = []
    for probe in range(10, 15):
        clock[0] += b.interval
        assert b.claim_limit(50) == 1
        assert await b.admit(probe) is None  # the probe goes
        assert await b.admit(probe + 100) is not None  # nothing else meanwhile
        await b.settle(probe, GATEWAY)
        intervals.append(b.interval)
    assert intervals == [4.0, 8.0, 8.0, 8.0, 8.0]
    assert b.open


async def test_a_probe_that_gets_an_answer_closes_it_and_releases_the_rows() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    await fail(b, 3)
    clock[0] += 2.0
    assert await b.admit(7) is None
    await b.settle(7, OK)
    assert not b.open and store.state == "closed" and b.claim_limit(50) == 50
    (horizon, codes) = store.closes[0]
    assert horizon >= 300 and {"stripe_outage", "connection_error", "http_503"} <= set(codes)


async def test_another_replica_holding_the_probe_holds_this_one_back() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    await fail(b, 3)
    store.holder = "relay-b"
    clock[0] += 2.0
    assert await b.admit(1) is not None
    assert b.claim_limit(50) == 0  # it looks again after an interval, not at once


async def test_the_shared_state_opens_and_closes_every_replica() -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    store.state, store.interval = "open", 4.0
    await b.sync()
    assert b.open and b.interval == 4.0 and await b.admit(1) is not None
    store.state = "closed"
    await b.sync()
    assert not b.open and await b.admit(2) is None


@pytest.mark.parametrize("when", ["opening", "probing"])
async def test_with_the_database_away_it_acts_on_its_own_calls(when: str) -> None:
    store, clock = FakeStore(), [0.0]
    b = breaker(store, clock)
    store.down = when == "opening"
    await fail(b, 3)
    assert b.open
    store.down = True
    clock[0] += 2.0
    assert await b.admit(1) is not None  # no probe without the lease: it waits
    await b.sync()  # counts kept for later
    assert b.open

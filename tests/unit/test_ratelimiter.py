"""The GCRA limiter with an injected clock: slots, burst, 429 cuts, recovery, new shares."""

import pytest

from relay.stripe.rate_limit import RateLimiter


def slots(limiter: RateLimiter, n: int, now: float) -> list[float]:
    return [limiter.reserve(now=now) for _ in range(n)]


def test_calls_at_one_instant_are_spaced_one_over_the_rate() -> None:
    limiter = RateLimiter(10.0)
    assert slots(limiter, 4, now=100.0) == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_burst_lets_that_many_calls_go_at_once_after_an_idle_spell() -> None:
    limiter = RateLimiter(100.0, burst=3.0)
    waits = slots(limiter, 5, now=50.0)
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.01, 0.02])


def test_any_one_second_window_stays_within_rate_plus_burst() -> None:
    limiter = RateLimiter(20.0, burst=2.0)
    now = 10.0
    starts = [now + limiter.reserve(now=now) for _ in range(100)]
    in_first_second = [s for s in starts if s < now + 1.0]
    assert len(in_first_second) <= 20 + 2


def test_a_late_caller_finds_its_slot_already_due() -> None:
    limiter = RateLimiter(10.0)
    limiter.reserve(now=0.0)
    assert limiter.reserve(now=5.0) == 0.0  # the loop was busy: no throughput is lost


def test_a_429_cuts_the_rate_by_a_quarter_once_per_burst(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("relay.stripe.rate_limit.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(100.0)
    limiter.on_rate_limited()
    limiter.on_rate_limited()  # the same burst of 429s: one cut
    assert limiter.rate == 75.0
    clock[0] += 0.3
    limiter.on_rate_limited()
    assert limiter.rate == pytest.approx(56.25)


def test_quiet_seconds_restore_the_rate_towards_the_ceiling(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("relay.stripe.rate_limit.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(100.0)
    limiter.on_rate_limited()
    limiter.reserve(now=1000.5)  # within a second of the cut: no recovery yet
    assert limiter.rate == 75.0
    limiter.reserve(now=1002.0)  # 5% of the ceiling per second since the last adjustment
    assert limiter.rate == pytest.approx(82.5)
    limiter.reserve(now=1100.0)
    assert limiter.rate == 100.0


def test_a_lower_share_applies_at_once_a_higher_one_waits_for_a_backoff(monkeypatch) -> None:
    monkeypatch.setattr("relay.stripe.rate_limit.time.monotonic", lambda: 1000.0)
    limiter = RateLimiter(100.0)
    limiter.set_ceiling(50.0)
    assert (limiter.ceiling, limiter.rate) == (50.0, 50.0)
    limiter.on_rate_limited()  # 37.5, backing off
    limiter.set_ceiling(100.0)
    assert (limiter.ceiling, limiter.rate) == (100.0, 37.5)

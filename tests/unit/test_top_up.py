"""The top-up cursor's rule (an injected clock): continue after the newest row taken; after a
short top-up, from `recent` before the claim's now(); from the start at the first top-up and
once `restart_seconds` passed since the last restart."""

from datetime import UTC, datetime, timedelta

from relay.core.top_up import IDLE_SECONDS, RECENT, TopUp

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def rows(first: int, n: int) -> list[tuple[datetime, int]]:
    return [(T0 + timedelta(seconds=i // 3), i) for i in range(first, first + n)]


def test_a_full_top_up_moves_the_cursor_to_its_newest_row() -> None:
    cursor = TopUp(clock=Clock())
    assert cursor.start() is None
    cursor.passed(reversed(rows(1, 10)), fill=10)
    assert cursor.start() == (T0 + timedelta(seconds=3), 10)


def test_a_short_top_up_starts_the_next_a_moment_before_now() -> None:
    """Keeping up: not from the start (the dead entries of every row settled since the
    outbox's last VACUUM), not after the newest row taken (a row whose transaction began
    earlier may commit after it)."""
    cursor = TopUp(clock=Clock())
    cursor.start()
    cursor.passed(rows(1, 10), fill=10)
    cursor.start()
    cursor.passed(rows(11, 4), fill=10)
    assert cursor.start() == RECENT
    cursor.passed([], fill=10)  # found nothing at all: still keeping up
    assert cursor.start() == RECENT
    cursor.passed(rows(15, 10), fill=10)  # a burst: a backlog again
    assert cursor.start() == rows(24, 1)[0]


def test_a_top_up_starts_from_the_start_once_restart_seconds_passed() -> None:
    clock = Clock()
    cursor = TopUp(restart_seconds=1.0, clock=clock)
    starts = []
    for i in range(7):
        starts.append(cursor.start())
        cursor.passed(rows(10 * i + 1, 10 if i % 2 else 3), fill=10)  # full and short in turn
        clock.t += 0.4
    # restarts at 0 s, 1.2 s (the first start 1 s or more after the last restart), 2.4 s
    assert [s is None for s in starts] == [True, False, False, True, False, False, True]
    assert {type(s) for s in starts if s is not None} == {tuple, timedelta}


def test_a_relay_that_claims_seldom_always_starts_from_the_start() -> None:
    clock = Clock()
    cursor = TopUp(restart_seconds=1.0, clock=clock)
    for i in range(4):
        assert cursor.start() is None
        cursor.passed(rows(10 * i + 1, 10 if i % 2 else 3), fill=10)
        clock.t += 1.0


def test_the_last_claim_to_finish_sets_the_cursor() -> None:
    """Two claims of one relay run at once from the same cursor."""
    cursor = TopUp(clock=Clock())
    cursor.start()
    cursor.passed(rows(1, 10), fill=10)
    assert cursor.start() == cursor.start()  # both claims start after row 10
    cursor.passed(rows(21, 10), fill=10)
    cursor.passed(rows(11, 10), fill=10)
    assert cursor.after == rows(20, 1)[0]


def test_a_top_up_back_from_idle_starts_from_the_start() -> None:
    """After a top-up that found nothing, the next one soon after (a relay that keeps up looks
    again at once) keeps the window; one after `IDLE_SECONDS` (an idle relay woken by a
    commit, maybe of a bulk load as old as its transaction) starts from the start."""
    clock = Clock()
    cursor = TopUp(restart_seconds=10.0, clock=clock)
    cursor.start()
    cursor.passed(rows(1, 3), fill=10)
    clock.t += 0.01
    assert cursor.start() == RECENT
    cursor.passed([], fill=10)
    clock.t += 0.01
    assert cursor.start() == RECENT  # the next claim of a relay that keeps up
    cursor.passed(rows(4, 3), fill=10)
    clock.t += 1.5 * IDLE_SECONDS
    assert cursor.start() == RECENT  # it found rows: not idle
    cursor.passed([], fill=10)
    clock.t += 1.5 * IDLE_SECONDS
    assert cursor.start() is None

"""The top-up cursor's rule (an injected clock): continue after the newest row taken; after a
short top-up, from `recent` before the claim's now(); from the start at the first top-up, once
`restart_seconds` passed since the last restart, and back from idle."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from relay.core.top_up import IDLE_SECONDS, RECENT, Begun, Point, TopUp

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FILL = 10


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def rows(first: int, n: int) -> list[Point]:
    return [(T0 + timedelta(seconds=i // 3), i) for i in range(first, first + n)]


def top_up(cursor: TopUp, taken: Sequence[Point], count: int | None = None) -> Begun:
    """One top-up of FILL rows that took `taken` (and `count` rows in all, if more)."""
    begun = cursor.start()
    cursor.passed(begun, taken, len(taken) if count is None else count, FILL)
    return begun


def test_a_full_top_up_moves_the_cursor_to_its_newest_row() -> None:
    cursor = TopUp(clock=Clock())
    assert top_up(cursor, list(reversed(rows(1, 10)))).at is None
    assert cursor.start().at == (T0 + timedelta(seconds=3), 10)


def test_a_short_top_up_starts_the_next_a_moment_before_now() -> None:
    """Keeping up: not from the start (the dead entries of every row settled since the
    outbox's last VACUUM), not after the newest row taken (a row whose transaction began
    earlier may commit after it)."""
    cursor = TopUp(clock=Clock())
    top_up(cursor, rows(1, 10))
    assert top_up(cursor, rows(11, 4)).at == (T0 + timedelta(seconds=3), 10)
    assert top_up(cursor, []).at == RECENT  # found nothing at all: still keeping up
    assert top_up(cursor, rows(15, 10)).at == RECENT  # a burst: a backlog again
    assert cursor.start().at == rows(24, 1)[0]


def test_a_top_up_starts_from_the_start_once_restart_seconds_passed() -> None:
    clock = Clock()
    cursor = TopUp(restart_seconds=1.0, clock=clock)
    starts = []
    for i in range(7):
        starts.append(top_up(cursor, rows(10 * i + 1, 10 if i % 2 else 3)).at)  # short, full
        clock.t += 0.4
    # restarts at 0 s, 1.2 s (the first start 1 s or more after the last restart), 2.4 s
    assert [s is None for s in starts] == [True, False, False, True, False, False, True]
    assert {type(s) for s in starts if s is not None} == {tuple, timedelta}


def test_a_relay_that_claims_seldom_always_starts_from_the_start() -> None:
    clock = Clock()
    cursor = TopUp(restart_seconds=1.0, clock=clock)
    for i in range(4):
        assert top_up(cursor, rows(10 * i + 1, 10 if i % 2 else 3)).at is None
        clock.t += 1.0


def test_restart_at_says_when_a_top_up_that_did_not_start_from_the_start_is_followed_up() -> None:
    """The producer looks again then, if nothing wakes it first: a row left behind the window
    is not left for the poll."""
    clock = Clock()
    cursor = TopUp(restart_seconds=1.0, clock=clock)
    top_up(cursor, rows(1, 3))
    assert cursor.restart_at() is None  # that one started from the start
    clock.t += 0.3
    top_up(cursor, [])  # from the window
    assert cursor.restart_at() == 101.0
    clock.t = 101.0
    assert top_up(cursor, []).at is None
    assert cursor.restart_at() is None


def test_a_top_up_back_from_idle_starts_from_the_start() -> None:
    """After a top-up that found nothing, the next one soon after (a relay that keeps up looks
    again at once) keeps the window; one after `IDLE_SECONDS` (an idle relay woken by a
    commit, maybe of a bulk load as old as its transaction) starts from the start."""
    clock = Clock()
    cursor = TopUp(restart_seconds=10.0, clock=clock)
    top_up(cursor, rows(1, 3))
    clock.t += 0.01
    assert top_up(cursor, []).at == RECENT
    clock.t += 0.01
    assert top_up(cursor, rows(4, 3)).at == RECENT  # the next claim of a relay that keeps up
    clock.t += 1.5 * IDLE_SECONDS
    assert top_up(cursor, []).at == RECENT  # the last one found rows: not idle
    clock.t += 1.5 * IDLE_SECONDS
    assert cursor.start().at is None


def test_a_full_top_up_of_rows_without_a_point_continues_from_the_start() -> None:
    """Rows due since '-infinity' (or before year 1) have no point: a top-up full of them is
    full (more may be due), and the next one starts from the start, not from the window."""
    cursor = TopUp(clock=Clock())
    top_up(cursor, [], count=FILL)
    assert cursor.full
    assert cursor.start().at is None


def test_the_last_claim_to_finish_sets_the_cursor() -> None:
    """Two claims of one relay run at once from the same cursor."""
    cursor = TopUp(clock=Clock())
    top_up(cursor, rows(1, 10))
    first, second = cursor.start(), cursor.start()
    assert first.at == second.at == rows(10, 1)[0]  # both claims start after row 10
    cursor.passed(second, rows(21, 10), 10, FILL)
    cursor.passed(first, rows(11, 10), 10, FILL)
    assert cursor.after == rows(20, 1)[0]


def test_a_short_claim_does_not_undo_a_full_one_that_finished_while_it_ran() -> None:
    """A restart finds a backlog behind the window (a dead relay's expired leases) while a
    claim from the window, woken by a hint, comes back short and finishes last: the next top-up
    continues after the restart's rows, not from the window."""
    clock = Clock()
    cursor = TopUp(clock=clock)
    top_up(cursor, rows(1, 3))
    clock.t += 2.0
    restart = cursor.start()
    clock.t += 0.01
    from_window = cursor.start()
    assert (restart.at, from_window.at) == (None, RECENT)
    cursor.passed(restart, rows(10, 10), 10, FILL)
    cursor.passed(from_window, rows(100, 2), 2, FILL)
    assert cursor.full and cursor.start().at == rows(19, 1)[0]

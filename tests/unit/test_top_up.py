"""The top-up cursor's rule: continue after the newest row taken, start again from the start
after a short top-up and every `restart_every` top-ups."""

from datetime import UTC, datetime, timedelta

from relay.core.top_up import TopUp

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(first: int, n: int) -> list[tuple[datetime, int]]:
    return [(T0 + timedelta(seconds=i // 3), i) for i in range(first, first + n)]


def test_a_full_top_up_moves_the_cursor_to_its_newest_row() -> None:
    cursor = TopUp()
    assert cursor.start() is None
    cursor.passed(reversed(rows(1, 10)), fill=10)
    assert cursor.start() == (T0 + timedelta(seconds=3), 10)


def test_a_short_top_up_starts_the_next_from_the_start() -> None:
    cursor = TopUp()
    cursor.start()
    cursor.passed(rows(1, 10), fill=10)
    cursor.start()
    cursor.passed(rows(11, 4), fill=10)
    assert cursor.start() is None


def test_every_restart_every_th_top_up_starts_from_the_start() -> None:
    cursor = TopUp(restart_every=3)
    starts = []
    for i in range(7):
        starts.append(cursor.start())
        cursor.passed(rows(10 * i + 1, 10), fill=10)
    assert [s is None for s in starts] == [True, False, False, True, False, False, True]


def test_the_last_claim_to_finish_sets_the_cursor() -> None:
    """Two claims of one relay run at once from the same cursor; a restart moves it back."""
    cursor = TopUp()
    cursor.start()
    cursor.passed(rows(1, 10), fill=10)
    assert cursor.start() == cursor.start()  # both claims start after row 10
    cursor.passed(rows(21, 10), fill=10)
    cursor.passed(rows(11, 10), fill=10)
    assert cursor.after == rows(20, 1)[0]

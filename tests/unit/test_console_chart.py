"""The overview's chart: an error rate of a single minute is still drawn."""

from datetime import UTC, datetime

from relay.db.queries import Minute
from relay.server.console.chart import draw

NOW = datetime(2026, 12, 6, 14, 16, 30, tzinfo=UTC)


def test_the_first_minute_of_an_outage_shows_its_error_rate() -> None:
    """Ten calls, all failed, all in the current minute: the chart marks 100 %."""
    minute = NOW.replace(second=0)
    chart = draw([Minute(minute, accepted=0, errors=10, calls=10, stride=1)], NOW, 180)
    assert 'id="error-line"' in chart.svg and "<circle" in chart.svg
    assert chart.calls == chart.errors == 10


def test_several_minutes_draw_one_line() -> None:
    minutes = [NOW.replace(minute=m, second=0) for m in (14, 15, 16)]
    chart = draw([Minute(m, accepted=5, errors=1, calls=6, stride=1) for m in minutes], NOW, 180)
    assert chart.svg.count("<polyline") == 1 and "<circle" not in chart.svg

"""One clock for Stripe's timestamp window: the database's, corrected by Stripe's.

The database judged every row's timestamp at insert time by its own clock (docs/design.md,
"One clock"); Stripe judges it again on arrival by Stripe's. This host's clock is neither: a
relay host ten minutes ahead would fail rows the database accepted as 34 days 23 hours old, and
one ten minutes behind would hold every fresh row as "in the future". So the relay keeps two
offsets from its host's wall clock and reads the time through them:

- the database's, measured by the database watch (relay/pipeline/database_watch.py) at start
  and on every turn, from `statement_timestamp()` against the midpoint of the round trip;
- Stripe's, from the `Date` header of its answers (both clients feed `observe_date`). A Date
  has whole seconds and is cut, not rounded: half a second is added back.

`now()` is the host's clock plus Stripe's offset once one answer came, else plus the
database's, else the host's alone (only before the first database read). Either offset beyond
the margin is the skew an operator must hear about: one log line when it crosses the margin
(and one when it comes back), and a gauge per clock. The margin is the one setting
(`OUTBOX_CLOCK_MARGIN`) that also narrows the window at both ends and that `doctor` uses.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import structlog

from relay.core import metrics

log = structlog.get_logger("relay")

DATABASE = "database"
STRIPE = "stripe"
DATE_RESOLUTION = timedelta(seconds=0.5)  # a Date header's whole second, cut: its midpoint


def host_clock() -> datetime:
    return datetime.now(UTC)


class Clocks:
    """This host's wall clock corrected to the database's and Stripe's (see the module)."""

    def __init__(self, margin: timedelta, host: Callable[[], datetime] = host_clock) -> None:
        self.margin = margin
        self._host = host
        self._offsets: dict[str, timedelta] = {}
        self._skewed: set[str] = set()
        self._last_date: str | None = None

    def now(self) -> datetime:
        """The time by which Stripe will judge a timestamp sent now (best known estimate)."""
        offset = self._offsets.get(STRIPE, self._offsets.get(DATABASE))
        return self._host() if offset is None else self._host() + offset

    def database_now(self) -> datetime:
        """The database's clock (the one that wrote `created_at`), as far as known."""
        offset = self._offsets.get(DATABASE)
        return self._host() if offset is None else self._host() + offset

    def offset(self, clock: str) -> timedelta | None:
        """`clock` (DATABASE or STRIPE) minus this host's clock, when measured."""
        return self._offsets.get(clock)

    def host(self) -> datetime:
        return self._host()

    def observe_database(self, then: datetime, sent: datetime, received: datetime) -> None:
        """The database said `then` during a round trip from `sent` to `received` (host
        times): it said it about halfway."""
        self._set(DATABASE, then - (sent + (received - sent) / 2))

    def observe_date(self, header: str | None) -> None:
        """A `Date` header of an answer from Stripe, just received. Parsed once per distinct
        value (it changes once a second, while answers can come a thousand times as often)."""
        if not header or header == self._last_date:
            return
        self._last_date = header
        try:
            then = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            return  # not a date: nothing learnt
        if then.tzinfo is None:
            return  # "-0000": no zone, so no clock to compare with
        self._set(STRIPE, then + DATE_RESOLUTION - self._host())

    def _set(self, clock: str, offset: timedelta) -> None:
        self._offsets[clock] = offset
        seconds = offset.total_seconds()
        metrics.CLOCK_OFFSET.labels(clock).set(seconds)
        skewed = abs(offset) > self.margin
        if skewed == (clock in self._skewed):
            return
        if skewed:
            self._skewed.add(clock)
            log.warning(
                "clock_skew",
                clock=clock,
                offset_s=round(seconds, 1),
                margin_s=self.margin.total_seconds(),
                detail=f"the {clock}'s clock is off this host's by more than the margin; the "
                "relay judges timestamps by the database's and Stripe's clocks, but sync this "
                "host with NTP (webhook signatures and logs use its clock)",
            )
        else:
            self._skewed.discard(clock)
            log.info("clock_skew_resolved", clock=clock, offset_s=round(seconds, 1))

"""Where a relay's next v2 top-up starts: after the newest row its previous top-up locked, or
a moment before the database's now() after a top-up that came back short.

A claim does not move a leased row out of the due index (its lease is in the lease table,
migration outbox_0020), and a settled row's entry stays in that index, dead, until the outbox's
next VACUUM. So a top-up that always started at the oldest due row would read past every row
leased before it and every entry settled since that VACUUM: in an outbox in service, where a
large table is vacuumed rarely, a growing prefix of dead entries.

- **In a backlog** (a top-up took all it asked for) the next one starts after the newest row
  it locked: the due index is ordered by (available_at, id) (migration outbox_0026), so the
  scan begins there.
- **Keeping up** (the top-up came back short: it reached the newest due row) the next one
  starts `RECENT` before the claim's own now() (the database's clock): rows committed since,
  and rows whose transaction began that long before their commit (a row's available_at is its
  transaction's now()), are ahead of it. It passes the rows in flight and the entries settled
  in that span, not the whole prefix.
- **Every `RESTART_SECONDS`** (this relay's monotonic clock) a top-up starts from the start
  whatever happened: rows left behind are taken then (a row committed later than `RECENT`
  after its transaction began, a lease that expired, a row released unsent or one a
  concurrent claim locked but did not lease). So a row behind waits at most `RESTART_SECONDS`
  longer than it would have from the start; a restart costs what every top-up cost before (a
  read of the dead prefix and of every leased row), once per `RESTART_SECONDS`. A relay that
  claims less often than that always starts from the start.
- **Back from idle**: a top-up at least `IDLE_SECONDS` after one that found nothing starts from
  the start too. A relay that keeps up finds nothing on about every other claim (the look again
  after a short claim), but the next claim follows within milliseconds; an idle relay woken by
  a commit, maybe of a long transaction (a bulk load's rows are as old as its start), would
  otherwise have waited for the next restart.

Where a scan starts never decides who gets a row: the claim's row locks and the lease table's
primary key still arbitrate between relays, each of which keeps its own cursor.
"""

import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

Point = tuple[datetime, int]  # (available_at, id): the due index's order
# Where a top-up starts: after a row, a span before the claim's now(), or (None) from the start.
Start = Point | timedelta | None

# A short top-up's successor starts this long before the claim's now(): a fact whose
# transaction commits within a second of its start (a web request's) is taken at once. At
# 2,000 facts/s the span holds about 2,000 entries, most of them dead and marked so by the
# first scan that passed them (about 7 index pages).
RECENT = timedelta(seconds=1)
# The longest a row behind the cursor waits for a restart: about the time a restart took before
# (32 top-ups at v2's default batch in a backlog), and a read of the dead prefix once a second.
RESTART_SECONDS = 1.0
# A relay that found nothing this long ago is back from idle (hint_recheck is 0.02 s).
IDLE_SECONDS = 0.1


class TopUp:
    """One relay's top-up cursor (the claims of one producer, two of which can run at once)."""

    def __init__(
        self,
        restart_seconds: float = RESTART_SECONDS,
        recent: timedelta = RECENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.restart_seconds = restart_seconds
        self.recent = recent
        self._clock = clock
        self.after: Point | None = None  # the newest row a full top-up locked
        self.full = True  # the last top-up took all it was asked for (relay.pipeline.producer)
        self._restarted: float | None = None  # when a top-up last started from the start
        self._found_nothing: float | None = None  # when the last top-up ended, if it took none

    def start(self) -> Start:
        """Where the next top-up starts: after the cursor (a backlog), `recent` before now()
        (keeping up), or None (from the start: the first top-up, once `restart_seconds` passed
        since the last restart, and back from idle)."""
        now = self._clock()
        idle = self._found_nothing is not None and now - self._found_nothing >= IDLE_SECONDS
        if idle or self._restarted is None or now - self._restarted >= self.restart_seconds:
            self._restarted = now
            return None
        if self.after is not None:
            return self.after
        return self.recent if not self.full else None

    def passed(self, taken: Iterable[Point], fill: int) -> None:
        """A top-up of `fill` rows locked `taken`: continue after the newest, or, if it came
        back short (nothing due was left after it; `full` says which), from `recent` before
        now(). The last claim to finish sets the cursor."""
        points = list(taken)
        self.full = len(points) >= fill
        self.after = max(points) if self.full else None
        self._found_nothing = None if points else self._clock()

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
  When the last top-up did not start from the start, `restart_at` says when the next restart
  is due, and the producer looks again then if nothing woke it before (a row committed by a
  long transaction just after a short claim, when no more traffic comes, would otherwise have
  waited for the poll).
- **Back from idle**: a top-up at least `IDLE_SECONDS` after one that found nothing starts from
  the start too. A relay that keeps up finds nothing on some claims (woken by the hint of a row
  an earlier claim took), but the next claim follows within milliseconds; an idle relay woken by
  a commit, maybe of a long transaction (a bulk load's rows are as old as its start), would
  otherwise have waited for the next restart.
- **Two claims at once** (a relay runs up to two) start from the same cursor, and the last to
  finish sets it, except that a short top-up does not undo a full one that finished while it
  ran: the full one found rows left after its newest (a restart that found a backlog behind
  the window, say), which the short one, started elsewhere, says nothing about.

Where a scan starts never decides who gets a row: the claim's row locks and the lease table's
primary key still arbitrate between relays, each of which keeps its own cursor.
"""

import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

Point = tuple[datetime, int]  # (available_at, id): the due index's order
# Where a top-up starts: after a row, a span before the claim's now(), or (None) from the start.
Start = Point | timedelta | None


class Begun(NamedTuple):
    """One top-up's start, and how often a full top-up had moved the cursor then (`passed`)."""

    at: Start
    moves: int


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
        self._from_start = True  # the last top-up started from the start
        self._moves = 0  # how often a full top-up moved the cursor

    def start(self) -> Begun:
        """Where the next top-up starts: after the cursor (a backlog), `recent` before now()
        (keeping up), or None (from the start: the first top-up, once `restart_seconds` passed
        since the last restart, back from idle, and after a full top-up that moved no cursor)."""
        now = self._clock()
        idle = self._found_nothing is not None and now - self._found_nothing >= IDLE_SECONDS
        at: Start = None
        if idle or self._restarted is None or now - self._restarted >= self.restart_seconds:
            self._restarted = now
        elif self.after is not None:
            at = self.after
        elif not self.full:
            at = self.recent
        self._from_start = at is None
        return Begun(at, self._moves)

    def passed(self, begun: Begun, taken: Iterable[Point], count: int, fill: int) -> None:
        """A top-up that began at `begun` took `count` of the `fill` rows it asked for, `taken`
        their points (a row due since '-infinity' has none): continue after the newest, or, if
        it came back short (nothing due was left after its start), from `recent` before now().
        The last claim to finish sets the cursor, but a short one leaves a cursor that a full
        one set while it ran."""
        full = count >= fill
        if not full and begun.moves != self._moves and self.after is not None:
            return
        points = list(taken)
        self.full = full
        self.after = max(points) if full and points else None
        self._moves += full
        self._found_nothing = None if count else self._clock()

    def restart_at(self) -> float | None:
        """When the next top-up starts from the start, if the last one did not (monotonic)."""
        if self._from_start or self._restarted is None:
            return None
        return self._restarted + self.restart_seconds

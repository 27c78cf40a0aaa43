"""Where a relay's next v2 top-up starts: after the newest row its previous top-up locked.

A claim does not move a leased row out of the due index (its lease is in the lease table,
migration outbox_0020), so a top-up that always started at the oldest due row would read past
every row leased before it. Each relay remembers the (available_at, id) of the last row its
top-up locked and starts the next one after it; the due index is ordered by those two columns
(migration outbox_0026), so the scan begins there.

Rows can be left behind the cursor: a row committed late with an older available_at, one whose
lease expired, one back from backoff or released unsent, one a concurrent claim locked but did
not lease. They are not starved: the cursor starts again from the start when a top-up comes
back short (the scan reached the newest due row, so there is nothing more ahead of it) and
every RESTART_EVERY top-ups whatever happens. A restarted top-up takes the oldest due,
unleased rows as every top-up did before the cursor, so a row behind the cursor waits at most
RESTART_EVERY top-ups longer than it would have then. A restart costs what every top-up cost
before (about three buffer reads per leased row it passes), once per RESTART_EVERY top-ups.

The cursor decides only where a scan starts, never who gets a row: the claim's row locks and
the lease table's primary key still arbitrate between relays, each of which keeps its own.
"""

from collections.abc import Iterable
from datetime import datetime

Point = tuple[datetime, int]  # (available_at, id): the due index's order

# A restart re-reads the rows held (at v2's default, rate x 0.4 s of them): once in 32 top-ups
# that adds about 3% of that read to each, and at ten claims a second a row behind the cursor
# waits about three seconds more.
RESTART_EVERY = 32


class TopUp:
    """One relay's top-up cursor (the claims of one producer, two of which can run at once)."""

    def __init__(self, restart_every: int = RESTART_EVERY) -> None:
        self.restart_every = restart_every
        self.after: Point | None = None  # None: start from the oldest due row
        self.full = True  # the last top-up took all it was asked for (relay.pipeline.producer)
        self._since_restart = 0

    def start(self) -> Point | None:
        """Where the next top-up starts (None: from the start); every `restart_every`-th
        top-up since the last restart starts from the start."""
        if self._since_restart >= self.restart_every:
            self.after = None
        if self.after is None:
            self._since_restart = 0
        self._since_restart += 1
        return self.after

    def passed(self, taken: Iterable[Point], fill: int) -> None:
        """A top-up of `fill` rows locked `taken`: continue after the newest; start again from
        the start if it came back short (nothing due was left after it; `full` says which).
        The last claim to finish sets the cursor (a restart moves it back)."""
        points = list(taken)
        self.full = len(points) >= fill
        self.after = max(points) if self.full else None

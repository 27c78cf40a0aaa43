"""The database watch: is the database still the writable primary, and what time is it there?

A failover can point the relay at a replica (or an operator can set
`default_transaction_read_only=on`): every claim and outcome write then fails while reads still
work, so nothing but the failing writes would say so, and a relay that keeps answering /healthz
is never restarted. The watch reads `statement_timestamp()` and `transaction_read_only` (the
`database_probe` query) at start and every OUTBOX_UPKEEP_INTERVAL:

- at start, a read-only database stops the relay (exit 1, one line): a restart may find the
  primary again;
- while running, it sets `RelayState.read_only_since` (the producer stops claiming, the counter
  folding pauses, /readyz fails at once and /healthz after OUTBOX_READ_ONLY_GRACE, so the
  supervisor restarts the relay), logs `database_read_only` once and sets the
  `outbox_relay_database_read_only` gauge;
- while read-only, every turn first replaces the pool's connections: a session keeps the
  defaults it started with, so only a new one shows the database taking writes again. When it
  does, `database_writable` is logged and claiming resumes by itself.

Each probe also gives the database's clock to relay.core.clock.Clocks, the base of the time
by which the relay judges Stripe's timestamp window.
"""

import asyncio
import time

import structlog

from relay.core import metrics
from relay.core.clock import Clocks
from relay.core.errors import StartupError
from relay.core.retryable import RETRYABLE
from relay.db.queries import DatabaseProbe
from relay.db.store import Store
from relay.pipeline.executor import RelayState

log = structlog.get_logger("relay")


class DatabaseWatch:
    """Probes the database at start (`first`, by `outbox-relay run` before it listens) and then
    every `interval` seconds (`run`, a service of the relay)."""

    def __init__(self, store: Store, clocks: Clocks, state: RelayState, interval: float) -> None:
        self.store = store
        self.clocks = clocks
        self.state = state
        self.interval = interval

    async def first(self) -> None:
        """The probe at start: a read-only database is a startup error (exit 1)."""
        probe = await self._probe()
        if probe.read_only:
            raise StartupError(
                "the database in OUTBOX_DATABASE_URL is read-only (a replica, or "
                "default_transaction_read_only=on): point it at the primary"
            )

    async def run(self) -> None:
        while True:
            await self.turn()
            await asyncio.sleep(self.interval)

    async def turn(self) -> None:
        """One probe; a database that does not answer is logged and probed again next turn
        (its errors are the other services' to report too)."""
        try:
            if self.state.read_only_since is not None:
                await self.store.pool.drain()
            probe = await self._probe()
        except RETRYABLE as err:
            log.warning("database_probe_failed", error=str(err))
            return
        self._note(probe.read_only)

    async def _probe(self) -> DatabaseProbe:
        sent = self.clocks.host()
        probe = await self.store.probe()
        self.clocks.observe_database(probe.now, sent, self.clocks.host())
        return probe

    def _note(self, read_only: bool) -> None:
        if read_only == (self.state.read_only_since is not None):
            return
        metrics.DATABASE_READ_ONLY.set(1 if read_only else 0)
        if read_only:
            self.state.read_only_since = time.monotonic()
            log.error(
                "database_read_only",
                detail="the database refuses writes (a replica after a failover, or "
                "default_transaction_read_only=on): nothing is claimed until it takes writes; "
                "/readyz fails now, /healthz after OUTBOX_READ_ONLY_GRACE",
            )
        else:
            since = self.state.read_only_since or time.monotonic()
            self.state.read_only_since = None
            log.info("database_writable", read_only_s=round(time.monotonic() - since, 1))

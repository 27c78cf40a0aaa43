"""Keep the meter catalogue current: read each account's meters from Stripe at start, every
OUTBOX_METER_REFRESH_SECONDS, and at once when asked (a claimed row whose event name the
catalogue lacks, an error report naming a meter problem); store them for the replicas and the
operator commands; release held rows whose meter has become usable.

One job, its own loop. Reads are paced by the read budget, never by the send limiter. A read
that fails (a restricted key's 403, an outage, an answer we refuse) leaves the last known
catalogue in force, with one log line when an account's read outcome changes; a 401 pauses the
key (relay.stripe.auth_gate) so `/readyz` is not ready before any row was sent.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import stripe
import structlog

from relay.core.meters import METER_KEY_COLLISION, MeterInfo
from relay.db.store import Store
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.meters import MeterReadError, fetch_meters
from relay.stripe.reachability import Reachability
from relay.stripe.read_budget import ReadBudget

log = structlog.get_logger("relay")

Fetch = Callable[[str], Awaitable[list[MeterInfo]]]
# Seconds between meter reads while Stripe has never answered (the relay is not ready yet).
UNREACHED_RETRY = 5.0
# How long a pass waits for the outcomes decided before it to be written, before it releases
# held rows anyway (a row held meanwhile then waits for the next pass, as before).
SETTLE_SECONDS = 10.0


class MeterRefresh:
    """Reads meters into the catalogue and the database; releases rows it no longer holds."""

    def __init__(
        self,
        store: Store,
        catalogue: MeterCatalogue,
        fetch: Fetch,
        interval: float,
        on_key_refused: Callable[[str], None] = lambda detail: None,
        on_key_accepted: Callable[[], None] = lambda: None,
        reachability: Reachability | None = None,
        written: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self._fetch = fetch
        self.interval = interval
        self._on_key_refused = on_key_refused
        self._on_key_accepted = on_key_accepted
        self._reachability = reachability or Reachability(reached=True)
        # The completer's written_through_now: outcomes decided before the catalogue changed
        # are in the table before the release looks for held rows.
        self._written = written
        self._outcomes: dict[str, str] = {}  # account -> last read outcome (for log lines)
        self._poke = asyncio.Event()
        catalogue.on_request = self._poke.set
        self.refreshes = 0  # completed passes (tests await them)
        self.refreshed = asyncio.Condition()

    async def start(self) -> None:
        """The first pass, before traffic: the database's copy, then Stripe's platform
        meters and those of every account with unsent rows."""
        try:
            self.catalogue.load(await self.store.load_meters())
        except Exception as err:
            log.warning("meter_catalogue_load_failed", error=str(err)[:300])
        await self.refresh()

    async def run(self) -> None:
        while True:
            # Until Stripe first answers, the read is the readiness probe: retried sooner.
            wait = self.interval if self._reachability.reached else UNREACHED_RETRY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), min(wait, self.interval))
            self._poke.clear()
            await self.refresh()

    async def refresh(self) -> None:
        """One pass over the accounts; never raises (a failed statement waits for the next)."""
        wanted = set(self.catalogue.wanted)
        self.catalogue.wanted.clear()
        try:
            accounts = await self._accounts()
        except Exception as err:
            log.warning("meter_refresh_failed", error=str(err)[:300])
            accounts = self.catalogue.accounts()
        for account in sorted(accounts | wanted):
            await self._read(account)
        if self._written is not None and not await self._written(SETTLE_SECONDS):
            log.warning("meter_release_early", detail="outcomes still unwritten")
        try:
            await self._release()
            seen = self.catalogue.take_seen()
            if seen:
                await self.store.note_event_names(sorted(seen))
        except Exception as err:
            log.warning("meter_refresh_failed", error=str(err)[:300])
        async with self.refreshed:
            self.refreshes += 1
            self.refreshed.notify_all()

    async def _accounts(self) -> set[str]:
        in_use = {account for account, _ in await self.store.event_names_in_use()}
        return {""} | in_use | self.catalogue.accounts()

    async def _read(self, account: str) -> None:
        try:
            meters = await self._fetch(account)
        except MeterReadError as err:
            if err.outcome == "failed" and err.http_status is None:
                self._reachability.unanswered(err.detail)
            elif err.http_status is not None:  # a gateway's 502/503/504 is no answer either
                self._reachability.saw(err.http_status, err.detail)
            else:
                self._reachability.answered()
            await self._failed(account, err)
            return
        except Exception as err:  # a bug of ours: the last known catalogue stays
            log.exception("meter_read_crashed", stripe_account=account or None)
            await self._failed(account, MeterReadError("failed", type(err).__name__))
            return
        self._reachability.answered()
        self.catalogue.replace(account, meters)
        if account == "":
            self._on_key_accepted()
        self._changed(account, "ok", f"{len(meters)} meters")
        try:
            await self.store.save_meters(account, meters)
        except Exception as err:
            log.warning("meter_catalogue_save_failed", error=str(err)[:300])

    async def _failed(self, account: str, err: MeterReadError) -> None:
        outcome = "forbidden" if err.outcome == "refused" else err.outcome
        self.catalogue.read_failed(account, outcome)
        if err.outcome == "refused":
            self._on_key_refused(err.detail)
        self._changed(account, err.outcome, err.detail)
        try:
            await self.store.note_meter_read(account, outcome, err.detail[:500])
        except Exception as db_err:
            log.warning("meter_catalogue_save_failed", error=str(db_err)[:300])

    def _changed(self, account: str, outcome: str, detail: str) -> None:
        """One log line per change of an account's read outcome, none per pass."""
        if self._outcomes.get(account) == outcome:
            return
        self._outcomes[account] = outcome
        known = self.catalogue.known(account)
        if outcome == "ok":
            log.info("meter_catalogue_read", stripe_account=account or None, detail=detail)
            return
        log.warning(
            "meter_catalogue_unreadable",
            stripe_account=account or None,
            outcome=outcome,
            detail=detail[:300],
            action="the last known meters stay in force"
            if known
            else "rows are sent with the default payload keys (or OUTBOX_METER_KEYS)",
        )

    async def _release(self) -> None:
        """Rows held for a meter that is now usable become due at once. A key collision is a
        row's own problem: those rows look again after their hold."""
        for group in await self.store.held_by_meter():
            if group.code == METER_KEY_COLLISION:
                continue
            verdict = self.catalogue.verdict(group.account, group.event_name)
            if verdict.code == group.code:
                continue
            released = await self.store.release_held(group.account, group.event_name)
            if verdict.code is None:
                self.catalogue.hold_ended((group.account, group.event_name), group.code)
            log.info(
                "meter_rows_released",
                stripe_account=group.account or None,
                event_name=group.event_name,
                was=group.code,
                rows=released,
            )


def sdk_fetch(client: stripe.StripeClient, budget: ReadBudget) -> Fetch:
    async def fetch(account: str) -> list[MeterInfo]:
        return await fetch_meters(client, account, budget)

    return fetch

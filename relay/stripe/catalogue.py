"""The meter catalogue in memory: which claimed rows may be sent, and with which payload keys.

Stripe accepts a meter event with a 200 and drops it later when no active meter has its event
name, or when the payload lacks the meter's customer key (`meter_event_no_customer_defined`).
So before a report is sent the relay looks its account's meters up here:

- an active meter with raw events: the row is sent with the customer under the meter's
  customer key and the value under its value key (dimensions as recorded);
- no meter, an inactive meter, a pre-aggregated meter (`event_time_window`: only the last
  event of each window per customer would count), two active meters for one name, or a
  dimension named like one of the meter's keys: the row is held (pending, no attempt used, no
  call) with a code of our own (relay/core/meters.py) until the next refresh;
- an account whose meters cannot be read (a restricted key, an outage, with nothing known):
  sent as before, with the default keys, unless an override names the keys (the setting
  OUTBOX_METER_KEYS).

The catalogue is replaced whole per account by each successful read (relay/stripe/meters.py)
and loaded from the database at start, so a relay that cannot reach Stripe uses the last
known one. One log line when holding starts for an (account, event name, reason), one when it
ends; never one per row.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
import structlog

from relay.core.meters import (
    DEFAULT_CUSTOMER_KEY,
    DEFAULT_VALUE_KEY,
    METER_CHECKING,
    METER_CONFLICT,
    METER_INACTIVE,
    METER_KEY_COLLISION,
    METER_MISSING,
    METER_PRE_AGGREGATED,
    WHAT_TO_DO,
    MeterInfo,
)
from relay.core.rows import Claimed, Outcome
from relay.core.vocabulary import RelayCode

log = structlog.get_logger("relay")

Keys = tuple[str, str]  # (customer key, value key)
Group = tuple[str, str]  # (account, event name); '' is the platform account
CHECKING_DELAY = 1.0  # seconds a row of an account being read for the first time waits
# An account is read again on demand (an unknown event name claimed, an error report naming
# a meter problem) at most this often: a burst of such rows is one read, not a read storm.
MIN_ON_DEMAND = 5.0


@dataclass
class Verdict:
    """What the catalogue says about an (account, event name): the keys, or a hold code."""

    keys: Keys | None = None
    code: RelayCode | None = None
    detail: str = ""


@dataclass
class MeterCatalogue:
    hold_seconds: float
    overrides: dict[str, Keys] = field(default_factory=dict)
    on_request: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    # account -> event name -> meters (known accounts only)
    _meters: dict[str, dict[str, list[MeterInfo]]] = field(default_factory=dict)
    # accounts read at least once, and whether the last read failed with nothing known
    unreadable: dict[str, str] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    seen: set[Group] = field(default_factory=set)
    holding: dict[Group, str] = field(default_factory=dict)
    _requested_at: dict[str, float] = field(default_factory=dict)
    # verdicts per (account, event name), kept until the catalogue changes: the hot path is
    # one dictionary lookup per row
    _verdicts: dict[Group, "Verdict"] = field(default_factory=dict)

    # --- keeping it up to date ------------------------------------------------------

    def replace(self, account: str, meters: Iterable[MeterInfo]) -> None:
        """A fresh read of `account`'s meters (or the table's copy at start)."""
        by_name: dict[str, list[MeterInfo]] = {}
        for meter in meters:
            by_name.setdefault(meter.event_name, []).append(meter)
        self._meters[account] = by_name
        self.unreadable.pop(account, None)
        self._verdicts.clear()

    def load(self, meters: Iterable[MeterInfo]) -> None:
        """The database's copy (at start, before Stripe answers): per account as stored."""
        by_account: dict[str, list[MeterInfo]] = {}
        for meter in meters:
            by_account.setdefault(meter.account, []).append(meter)
        for account, found in by_account.items():
            self.replace(account, found)

    def read_failed(self, account: str, outcome: str) -> None:
        """A read failed: the last known meters stay; with none, rows go as before."""
        if account not in self._meters:
            self.unreadable[account] = outcome
            self._verdicts.clear()

    def known(self, account: str) -> bool:
        return account in self._meters

    def accounts(self) -> set[str]:
        """Every account the catalogue knows of or was asked about."""
        return set(self._meters) | set(self.unreadable) | self.wanted | {a for a, _ in self.seen}

    def active_meters(self, account: str, event_name: str) -> list[MeterInfo] | None:
        """The active meters of an event name (None: the account's meters were never read)."""
        known = self._meters.get(account)
        if known is None:
            return None
        return [m for m in known.get(event_name, []) if m.active]

    def request(self, account: str) -> None:
        """Read `account`'s meters soon (debounced per account, see MIN_ON_DEMAND)."""
        now = self.clock()
        if now - self._requested_at.get(account, -MIN_ON_DEMAND) < MIN_ON_DEMAND:
            return
        self._requested_at[account] = now
        self.wanted.add(account)
        self.on_request()

    # --- judging rows ---------------------------------------------------------------

    def verdict(self, account: str, event_name: str) -> Verdict:
        override = self.overrides.get(event_name)
        if override is not None:
            return Verdict(keys=override)
        known = self._meters.get(account)
        if known is None:
            if account in self.unreadable:
                return Verdict(keys=(DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY))
            return Verdict(code=METER_CHECKING, detail="meters not read yet")
        found = known.get(event_name, [])
        active = [m for m in found if m.active]
        if not found:
            return Verdict(code=METER_MISSING, detail=f"no meter has event name {event_name!r}")
        if not active:
            return Verdict(code=METER_INACTIVE, detail=f"meter {found[0].meter_id} is inactive")
        if len(active) > 1:
            ids = ", ".join(m.meter_id for m in active)
            return Verdict(code=METER_CONFLICT, detail=f"active meters {ids} share the name")
        meter = active[0]
        if meter.event_time_window is not None:
            return Verdict(
                code=METER_PRE_AGGREGATED,
                detail=f"meter {meter.meter_id} keeps only the last event per "
                f"{meter.event_time_window}",
            )
        return Verdict(keys=(meter.customer_key, meter.value_key))

    def check(self, row: Claimed) -> Claimed | Outcome:
        """The row to send (with the meter's keys), or the outcome that holds it."""
        if row.action != "report":
            return row
        account = row.stripe_account or ""
        group = (account, row.event_name)
        verdict = self._verdicts.get(group)
        if verdict is None:
            verdict = self._verdicts[group] = self.verdict(account, row.event_name)
            self.seen.add(group)
        if verdict.code in (METER_CHECKING, METER_MISSING):
            self.request(account)
        if verdict.keys is not None:
            sendable = with_keys(row, verdict.keys)
            if sendable is not None:
                return sendable
            verdict = Verdict(
                code=METER_KEY_COLLISION,
                detail=f"a dimension is named {verdict.keys[0]!r} or {verdict.keys[1]!r}",
            )
        code = verdict.code or METER_MISSING  # a verdict has keys or a code
        self._holding(group, verdict)
        delay = CHECKING_DELAY if code == METER_CHECKING else self.hold_seconds
        message = f"held, not sent: {verdict.detail}; {WHAT_TO_DO[code]}"
        return Outcome.unsent(row, code, message[:500], delay)

    def _holding(self, group: Group, verdict: Verdict) -> None:
        if verdict.code == METER_CHECKING or self.holding.get(group) == verdict.code:
            return
        self.holding[group] = verdict.code or ""
        log.warning(
            "meter_hold_started",
            stripe_account=group[0] or None,
            event_name=group[1],
            code=verdict.code,
            reason=verdict.detail,
            action=WHAT_TO_DO[verdict.code or METER_MISSING],
        )

    def hold_ended(self, group: Group, code: str) -> None:
        """Rows of `group` held with `code` may flow again (the refresh releases them)."""
        self.holding.pop(group, None)
        log.info(
            "meter_hold_ended", stripe_account=group[0] or None, event_name=group[1], code=code
        )

    def take_seen(self) -> set[Group]:
        """The groups judged since the last call (each refresh notes them in the database);
        the verdicts are forgotten so each group in use is noted again next time."""
        seen, self.seen = self.seen, set()
        self._verdicts.clear()
        return seen


def with_keys(row: Claimed, keys: Keys) -> Claimed | None:
    """The row with its customer and value under `keys`; None on a key collision (a
    dimension with the name of one of the keys: one value would overwrite the other)."""
    if keys == (DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY):
        return row  # the payload column already has them (the hot path: no parsing)
    customer_key, value_key = keys
    payload = row.payload
    customer = payload.pop(DEFAULT_CUSTOMER_KEY)
    value = payload.pop(DEFAULT_VALUE_KEY)
    if customer_key == value_key or customer_key in payload or value_key in payload:
        return None
    payload[customer_key] = customer
    payload[value_key] = value
    return row._replace(payload_json=orjson.dumps(payload).decode())

"""A pytest plugin for applications' tests: what usage did my code record, and what would Stripe
bill for it?

Installed with the package, it is active in every pytest run (entry point `pytest11`; with
plugin autoloading off, add `pytest_plugins = ["outbox.testing"]` to your conftest.py). Its
fixtures do nothing until a test asks for them:

- `outbox_facts`: the usage facts recorded so far, read through your own connection (so facts
  of the test's open transaction count) or, without one, committed in the database;
  `outbox_facts.assert_exactly([...], customer="cus_1")` fails with a readable diff.
- `outbox_stripe`: the project's Stripe emulator, started on a free port for the test and
  stopped after it; `outbox_stripe.drain()` runs the relay until no committed fact is left
  unsent, then `outbox_stripe.billed("api_calls", "cus_1")` is what Stripe would bill. Needs
  the `relay` extra.
- `outbox_database_url`: the database both read; `OUTBOX_DATABASE_URL` unless your conftest.py
  overrides the fixture (e.g. with your test database's URL).

The library itself never imports this module; the relay is imported only by `outbox_stripe`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from outbox.connections import Query, Steps, run
from outbox.dburl import ENV_VAR, psycopg_url

if TYPE_CHECKING:
    from relay.emulator import Emulator

FACTS_SQL = """
SELECT identifier, event_name, customer, value, dimensions, metadata, occurred_at,
       stripe_account, state
FROM meter_event_outbox
WHERE (CAST(:customer AS text) IS NULL OR customer = :customer)
  AND (CAST(:event_name AS text) IS NULL OR event_name = :event_name)
ORDER BY id
"""
UNSENT_SQL = "SELECT count(*) FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"
EVENT_NAMES_SQL = "SELECT DISTINCT event_name FROM meter_event_outbox WHERE state = 'pending'"
TEST_KEY = "sk_test_outbox_testing"
WEBHOOK_SECRET = "whsec_outbox_testing"  # noqa: S105 (the test emulator's, public)
# How often drain() looks at the outbox while the relay works (a test's waiting granularity).
DRAIN_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Fact:
    """One recorded usage fact as the outbox holds it."""

    identifier: str
    event_name: str
    customer: str
    value: Decimal
    dimensions: dict[str, str]
    metadata: dict[str, Any]
    timestamp: datetime
    stripe_account: str | None
    state: str

    def matches(self, expected: Mapping[str, Any]) -> bool:
        """Whether every field `expected` names has that value (values compare as numbers)."""
        for name, want in expected.items():
            have = getattr(self, name)
            if name == "value":
                have, want = Decimal(have), Decimal(str(want))
            if have != want:
                return False
        return True


def _fact(row: tuple[Any, ...]) -> Fact:
    import json

    identifier, event_name, customer, value, dimensions, metadata, occurred, account, state = row
    if isinstance(dimensions, str):  # drivers that do not decode jsonb
        dimensions, metadata = json.loads(dimensions), json.loads(metadata)
    return Fact(
        identifier,
        event_name,
        customer,
        Decimal(value),
        dimensions,
        metadata,
        occurred,
        account,
        state,
    )


def _facts_steps(customer: str | None, event_name: str | None) -> Steps[list[Fact]]:
    rows = yield Query(FACTS_SQL, {"customer": customer, "event_name": event_name})
    return [_fact(row) for row in rows]


def recorded_facts(conn: Any, *, customer: str | None = None, event_name: str | None = None) -> Any:
    """The facts visible to `conn` (any connection record_usage accepts: the open transaction's
    own facts included), oldest first; an awaitable for async connections."""
    return run(conn, _facts_steps(customer, event_name))


def assert_facts(facts: Sequence[Fact], expected: Sequence[Mapping[str, Any]]) -> None:
    """Exactly these facts, in any order: each expected mapping (a subset of Fact's fields,
    e.g. {"event_name": "api_calls", "value": 3}) matches one fact of its own, none is left."""
    unmatched = list(facts)
    missing: list[Mapping[str, Any]] = []
    # Most specific first, so a loose expectation does not take a fact a precise one needs.
    for want in sorted(expected, key=len, reverse=True):
        found = next((fact for fact in unmatched if fact.matches(want)), None)
        if found is None:
            missing.append(want)
        else:
            unmatched.remove(found)
    if missing or unmatched:
        lines = [f"recorded facts differ from the {len(expected)} expected:"]
        lines += [f"  missing:    {dict(want)}" for want in missing]
        lines += [f"  unexpected: {_short(fact)}" for fact in unmatched]
        raise AssertionError("\n".join(lines))


def _short(fact: Fact) -> str:
    return (
        f"{fact.identifier}: {fact.event_name} {fact.customer} value={fact.value}"
        + (f" dimensions={fact.dimensions}" if fact.dimensions else "")
        + (f" account={fact.stripe_account}" if fact.stripe_account else "")
    )


@dataclass
class OutboxFacts:
    """The `outbox_facts` fixture: facts through a connection, or committed ones."""

    database_url: str

    def __call__(
        self, conn: Any = None, *, customer: str | None = None, event_name: str | None = None
    ) -> list[Fact]:
        """Facts visible to `conn` (sync connections), or committed in the database."""
        if conn is not None:
            found: list[Fact] = recorded_facts(conn, customer=customer, event_name=event_name)
            return found
        import psycopg

        with psycopg.connect(psycopg_url(self.database_url)) as own:
            committed: list[Fact] = recorded_facts(own, customer=customer, event_name=event_name)
            return committed

    def assert_exactly(
        self,
        expected: Sequence[Mapping[str, Any]],
        conn: Any = None,
        *,
        customer: str | None = None,
        event_name: str | None = None,
    ) -> None:
        """Exactly `expected` was recorded (for this customer / event name, if given)."""
        assert_facts(self(conn, customer=customer, event_name=event_name), expected)


@dataclass
class StripeKit:
    """The `outbox_stripe` fixture: a Stripe emulator and a relay to drain the outbox into it."""

    database_url: str
    emulator: Emulator
    relay_port: int
    drained: list[dict[str, int]] = field(default_factory=list)

    def drain(self, timeout: float = 30.0) -> dict[str, int]:
        """Run the relay until no committed fact is pending or in flight; returns the outbox's
        rows per state. Only committed facts are seen (the relay has its own connections).
        From an async test: `await asyncio.to_thread(outbox_stripe.drain)`."""
        self._add_meters()
        stop = threading.Event()
        failure: list[BaseException] = []
        relay = threading.Thread(target=self._run_relay, args=(stop, failure), daemon=True)
        relay.start()
        try:
            self._until_sent(timeout, relay, failure)
        finally:
            stop.set()
            relay.join()
        if failure:
            raise failure[0]
        counts = self.states()
        self.drained.append(counts)
        return counts

    def billed(self, event_name: str, customer: str, account: str | None = None) -> Decimal:
        """What Stripe bills this customer on this meter (accepted events, less cancellations)."""
        return Decimal(str(self.emulator.total(event_name, customer, account)))

    def counted(self, identifier: str) -> int:
        """How often Stripe counted this identifier: 1 once drained, never 2."""
        return self.emulator.counted(identifier)

    def states(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(psycopg_url(self.database_url)) as conn:
            rows = conn.execute("SELECT state, count(*) FROM meter_event_outbox GROUP BY 1")
            return {state: n for state, n in rows}

    def _add_meters(self) -> None:
        """A meter for every event name waiting to be sent: a test asserts billing, not the
        meter set-up of its Stripe account."""
        import psycopg

        from relay.emulator import Meter

        with psycopg.connect(psycopg_url(self.database_url)) as conn:
            names = [name for (name,) in conn.execute(EVENT_NAMES_SQL)]
        for name in names:
            if self.emulator.state.meter_for(name) is None:
                self.emulator.add_meter(Meter(name))

    def _run_relay(self, stop: threading.Event, failure: list[BaseException]) -> None:
        from relay import daemon
        from relay.core.config import Settings

        settings = Settings(
            database_url=self.database_url,
            stripe_api_key=TEST_KEY,
            stripe_api_base=self.emulator.base_url,
            stripe_webhook_secret=WEBHOOK_SECRET,
            http_port=self.relay_port,
            poll_interval=0.1,
            relay_id=f"outbox-testing-{os.getpid()}",
        )

        async def serve() -> None:
            stopped = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(
                target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopped.set)), daemon=True
            ).start()
            await daemon.serve(settings, stopped)

        try:
            asyncio.run(serve())
        except BaseException as exc:  # handed to the test's thread, raised there
            failure.append(exc)

    def _until_sent(self, timeout: float, relay: threading.Thread, failure: list[Any]) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        with psycopg.connect(psycopg_url(self.database_url), autocommit=True) as conn:
            while conn.execute(UNSENT_SQL).fetchone() != (0,):
                if failure or not relay.is_alive():
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the outbox did not drain in {timeout:g} s: {self.states()} "
                        "(a timestamp in the future waits until Stripe's window opens)"
                    )
                time.sleep(DRAIN_POLL_SECONDS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def outbox_database_url() -> str:
    """The database the outbox lives in; override in your conftest.py to point at your test
    database."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        pytest.fail(f"set {ENV_VAR} or override the outbox_database_url fixture", pytrace=False)
    return url


@pytest.fixture
def outbox_facts(outbox_database_url: str) -> OutboxFacts:
    """Recorded usage facts: `outbox_facts(session)` in the test's transaction, `outbox_facts()`
    committed; `outbox_facts.assert_exactly([...], session, customer=...)`."""
    return OutboxFacts(outbox_database_url)


@pytest.fixture
def outbox_stripe(outbox_database_url: str) -> Iterator[StripeKit]:
    """A Stripe emulator for this test (free port, stopped after) and `drain()` to report the
    committed outbox to it."""
    try:
        from relay.emulator import Emulator, EmulatorConfig
    except ImportError:
        pytest.fail("outbox_stripe needs the relay: pip install 'outbox-relay[relay]'")
    relay_port = _free_port()
    config = EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        webhook_url=f"http://127.0.0.1:{relay_port}/webhooks/stripe",
        webhook_secret=WEBHOOK_SECRET,
    )
    with Emulator(config) as emulator:
        yield StripeKit(outbox_database_url, emulator, relay_port)

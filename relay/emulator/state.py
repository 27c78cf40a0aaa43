"""All mutable emulator state in one place, guarded by one lock.

The HTTP handlers run on the emulator's event loop while tests inspect and steer the
emulator from another thread, so every compound read or write goes through `lock`. The
handlers never await while holding it.
"""

from __future__ import annotations

import threading
from typing import Any

from relay.emulator.clock import Clock
from relay.emulator.config import EmulatorConfig, EventDestination, Meter
from relay.emulator.faults import FaultInjector, Faults
from relay.emulator.idempotency import IdempotencyStore
from relay.emulator.ledger import Ledger, LedgerSnapshot, Number
from relay.emulator.limits import ConcurrencyGuard, RateLimiter
from relay.emulator.meters import MeterBook
from relay.emulator.reports import ErrorReporter, EventStore
from relay.emulator.sessions import SessionStore
from relay.emulator.stats import RequestStats
from relay.emulator.validation import CustomerDirectory
from relay.emulator.webhooks import WebhookSender


class EmulatorState:
    """Meters, customers, ledger, idempotency, limits, sessions, faults and error reports."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.clock = Clock(config.clock_offset_seconds)
        self.started_at = self.clock.now_int()
        self.meter_book = MeterBook(config.meters)
        self.restricted_keys: set[str] = set(config.restricted_keys)
        self.meter_list_fault: str | None = config.meter_list_fault
        self.event_destinations: list[EventDestination] | None = (
            None if config.event_destinations is None else list(config.event_destinations)
        )
        self.customers = CustomerDirectory.from_config(config.customers)
        self.api_keys: set[str] | None = None if config.api_keys is None else set(config.api_keys)
        self.revoked_accounts: set[str] = set(config.revoked_accounts)
        self.ledger = Ledger()
        self.idempotency = IdempotencyStore(self.clock, config.idempotency_ttl_seconds)
        self.limiter = RateLimiter(config.rate_limit_live, config.rate_limit_test)
        self.guard = ConcurrencyGuard(enforce=config.enforce_concurrency)
        self.stats_counters = RequestStats()
        self.stream_duplicates_ignored = 0
        self.sessions = SessionStore(self.clock, config.session_ttl_seconds)
        self.faults = FaultInjector(self.clock, config.seed, config.faults or Faults())
        self.sender = WebhookSender(
            url=config.webhook_url,
            secrets=(config.webhook_secret, *config.webhook_additional_secrets),
            max_attempts=config.webhook_max_attempts,
            base_delay=config.webhook_retry_base_delay,
            max_delay=config.webhook_retry_max_delay,
            timeout=config.webhook_timeout,
        )
        self.events = EventStore()
        self.reporter = ErrorReporter(
            clock=self.clock,
            sender=self.sender,
            store=self.events,
            platform_account=config.platform_account,
            delay=config.error_report_delay,
            max_samples=config.error_report_max_samples,
        )

    def add_meter(self, meter: Meter, account: str | None = None, replace: bool = True) -> None:
        """Register a meter on one account (None: every account); by default it replaces the
        account's meters of the same event name (Stripe: one meter per event name)."""
        with self.lock:
            self.meter_book.add(meter, account, replace)

    def set_meter_active(self, meter_id: str, active: bool, account: str | None = None) -> bool:
        with self.lock:
            return self.meter_book.set_active(meter_id, active, account)

    def remove_meter(self, meter_id: str, account: str | None = None) -> None:
        with self.lock:
            self.meter_book.remove(meter_id, account)

    def meter_for(self, event_name: str, account: str) -> Meter | None:
        return self.meter_book.account(account).for_event(event_name)

    def meter_by_id(self, meter_id: str, account: str) -> Meter | None:
        return self.meter_book.account(account).by_id.get(meter_id)

    def meters(self, account: str) -> list[Meter]:
        return list(self.meter_book.account(account).by_id.values())

    def destinations(self) -> list[EventDestination]:
        """The event destinations: configured, else one webhook endpoint subscribed to the
        meter error events when a webhook URL is set (what a correct setup has)."""
        if self.event_destinations is not None:
            return list(self.event_destinations)
        if self.sender.url is None:
            return []
        return [EventDestination(url=self.sender.url)]

    def add_customer(self, customer: str) -> None:
        with self.lock:
            self.customers.known.add(customer)

    # --- inspection (thread-safe snapshots) ---------------------------------------------

    def ledger_snapshot(self) -> LedgerSnapshot:
        with self.lock:
            return self.ledger.snapshot(self.meter_for)

    def counted(self, identifier: str, account: str | None = None) -> int:
        with self.lock:
            return self.ledger.counted(identifier, account)

    def total(self, event_name: str, customer: str, account: str | None = None) -> Number:
        with self.lock:
            return self.ledger.total(event_name, customer, self.meter_for, account)

    def stats(self) -> dict[str, Any]:
        """Request counters plus limiter, concurrency, idempotency and webhook figures."""
        with self.lock:
            result = self.stats_counters.as_dict()
            per_key: list[dict[str, Any]] = [
                {"account": a, "meter": m, "customer": c, "max_concurrent": n}
                for (a, m, c), n in self.guard.max_observed.items()
            ]
            attempts = self.sender.attempts
            result.update(
                {
                    "rate_limited": self.limiter.rejected,
                    "concurrency_conflicts": self.guard.conflicts,
                    "max_concurrent": max((e["max_concurrent"] for e in per_key), default=0),
                    "max_concurrent_per_customer_meter": per_key,
                    "idempotent_replays": self.idempotency.replays,
                    "stream_duplicates_ignored": self.stream_duplicates_ignored,
                    "faults_injected": dict(self.faults.injected),
                    "webhook_attempts": len(attempts),
                    "webhook_delivered": sum(1 for a in attempts if a.ok),
                    "webhook_failed_attempts": sum(1 for a in attempts if not a.ok),
                    "error_reports_pending": self.reporter.pending,
                    "events_created": len(self.events.all()),
                }
            )
            return result

    def reset(self) -> None:
        """Back to the configured start: traffic, keys, sessions, counters, events, faults, clock.

        Meters, customers and event destinations set at run time are kept (they are
        configuration).
        """
        with self.lock:
            self.ledger.reset()
            self.idempotency.reset()
            self.limiter.reset()
            self.guard.reset()
            self.stats_counters.reset()
            self.stream_duplicates_ignored = 0
            self.sessions.reset()
            self.faults.clear()
            self.faults.injected.clear()
            self.faults.configure(self.config.faults)
            self.events.reset()
            self.reporter.reset()
            self.sender.attempts.clear()
            self.clock.reset(self.config.clock_offset_seconds)

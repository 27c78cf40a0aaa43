"""The verdict of a chaos run: the outbox (what the application committed and cancelled)
against the emulator's ledger (what Stripe would bill), one identifier at a time.

The database is the truth for "committed" and "cancelled": a commit cut by a crash has an
unknown outcome at the writer, so the writer's acknowledgements are only checked to be a
subset (an acknowledged fact missing from the table would be lost by PostgreSQL itself).
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FAILED_STATES = ("failed", "rejected")
LIVE_STATES = ("pending", "in_flight")


@dataclass(frozen=True)
class OutboxRow:
    identifier: str
    state: str
    action: str
    cancel_requested: bool
    last_error_code: str | None


@dataclass
class Verdict:
    committed: int = 0
    counted: int = 0
    cancelled: int = 0
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    cancelled_ok: int = 0
    cancelled_counted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_drained: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    acked_missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.twice
            or self.cancelled_counted
            or self.failed
            or self.not_drained
            or self.phantom
        )


def counted_per_identifier(ledger: dict[str, Any]) -> Counter[str]:
    """How many events per identifier count towards billing (accepted, not cancelled)."""
    return Counter(
        event["identifier"]
        for event in ledger["events"]
        if event["status"] == "accepted" and not event["cancelled"]
    )


def judge(rows: Iterable[OutboxRow], ledger: dict[str, Any], acked: Iterable[str]) -> Verdict:
    """Compare every committed row with the ledger."""
    counted = counted_per_identifier(ledger)
    verdict = Verdict()
    known: set[str] = set()
    for row in rows:
        known.add(row.identifier)
        verdict.committed += 1
        n = counted[row.identifier]
        if row.state in FAILED_STATES:
            verdict.failed.append(row.identifier)
        if row.state in LIVE_STATES:
            verdict.not_drained.append(row.identifier)
        if n > 1:
            verdict.twice.append(row.identifier)
        if row.cancel_requested:
            verdict.cancelled += 1
            if n:
                verdict.cancelled_counted.append(row.identifier)
            else:
                verdict.cancelled_ok += 1
        elif not n:
            verdict.lost.append(row.identifier)
    verdict.acked_missing = [identifier for identifier in acked if identifier not in known]
    verdict.lost += verdict.acked_missing
    verdict.phantom = [identifier for identifier in counted if identifier not in known]
    verdict.counted = sum(1 for n in counted.values() if n)
    return verdict

"""Idempotency keys, the way Stripe applies them.

* A key is scoped to the account (and mode) and kept for `ttl` on the emulator clock.
* Once execution began, the response is saved - 500s included - and a retry with the same
  key and the same parameters gets it back byte for byte.
* The same key with different parameters (or another endpoint) is an `idempotency_error`.
* A retry while the first request with that key is still executing gets a 409.
* Requests that never executed (validation errors, 429s, concurrency conflicts) leave no
  record, so they can be retried with the same key.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

from relay.emulator.clock import Clock

MAX_KEY_LENGTH = 255
Scope = tuple[str, bool]
Outcome = Literal["new", "replay", "mismatch", "in_flight"]
_SWEEP_EVERY = 10_000


@dataclass(frozen=True)
class StoredResponse:
    """A response exactly as first sent: status, body bytes, Stripe headers, request id."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    request_id: str


@dataclass
class IdempotencyRecord:
    fingerprint: Hashable
    created: float
    response: StoredResponse | None = None


@dataclass
class IdempotencyStore:
    clock: Clock
    ttl_seconds: float = 24 * 3600
    _records: dict[tuple[Scope, str], IdempotencyRecord] = field(default_factory=dict)
    _inserts: int = 0
    replays: int = 0

    def begin(
        self, scope: Scope, key: str, fingerprint: Hashable
    ) -> tuple[Outcome, IdempotencyRecord]:
        """Claim `key` for a request, or report why it cannot execute."""
        now = self.clock.now()
        slot = (scope, key)
        record = self._records.get(slot)
        if record is not None and now - record.created >= self.ttl_seconds:
            record = None
        if record is None:
            record = IdempotencyRecord(fingerprint=fingerprint, created=now)
            self._records[slot] = record
            self._maybe_sweep(now)
            return "new", record
        if record.fingerprint != fingerprint:
            return "mismatch", record
        if record.response is None:
            return "in_flight", record
        self.replays += 1
        return "replay", record

    def complete(self, record: IdempotencyRecord, response: StoredResponse) -> None:
        """Save the response of the request that claimed `record`."""
        if record.response is None:
            record.response = response

    def abandon(self, scope: Scope, key: str, record: IdempotencyRecord) -> None:
        """Forget a claim whose request never executed, so the key can be used again."""
        slot = (scope, key)
        if self._records.get(slot) is record and record.response is None:
            del self._records[slot]

    def reset(self) -> None:
        self._records.clear()
        self.replays = 0

    def __len__(self) -> int:
        return len(self._records)

    def _maybe_sweep(self, now: float) -> None:
        self._inserts += 1
        if self._inserts % _SWEEP_EVERY:
            return
        expired = [
            slot
            for slot, record in self._records.items()
            if record.response is not None and now - record.created >= self.ttl_seconds
        ]
        for slot in expired:
            del self._records[slot]

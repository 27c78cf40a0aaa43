"""v2 meter event sessions: short-lived bearer tokens for the high-throughput stream."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from relay.emulator.clock import Clock, rfc3339
from relay.emulator.wire import new_id

TOKEN_PREFIX = "mes_tok_"  # noqa: S105 (a prefix Stripe publishes, not a token)


@dataclass(frozen=True)
class MeterEventSession:
    id: str
    token: str
    account: str
    livemode: bool
    created: float
    expires_at: float

    def as_object(self) -> dict[str, Any]:
        """The `v2.billing.meter_event_session` wire object."""
        return {
            "object": "v2.billing.meter_event_session",
            "id": self.id,
            "authentication_token": self.token,
            "created": rfc3339(self.created),
            "expires_at": rfc3339(self.expires_at),
            "livemode": self.livemode,
        }


@dataclass
class SessionStore:
    clock: Clock
    ttl_seconds: float = 15 * 60
    _by_token: dict[str, MeterEventSession] = field(default_factory=dict)

    def create(self, account: str, livemode: bool) -> MeterEventSession:
        now = self.clock.now()
        session = MeterEventSession(
            id=new_id("mes"),
            token=TOKEN_PREFIX + secrets.token_urlsafe(24),
            account=account,
            livemode=livemode,
            created=now,
            expires_at=now + self.ttl_seconds,
        )
        self._by_token[session.token] = session
        return session

    def lookup(self, token: str) -> MeterEventSession | None:
        return self._by_token.get(token)

    def is_expired(self, session: MeterEventSession) -> bool:
        return self.clock.now() >= session.expires_at

    def reset(self) -> None:
        self._by_token.clear()

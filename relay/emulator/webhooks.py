"""Signed webhook delivery of thin events, with retries like an event destination.

The signature is Stripe's: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>`, one `v1=` per secret (as during secret rotation). `t` is REAL time,
not the emulator clock: receivers check it against their own clock (300 s tolerance in
stripe-python), so an advanced emulator clock must not make deliveries look stale.
The secrets are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks) relay-emulator"


def signature_header(payload: str, secrets: Sequence[str], timestamp: int | None = None) -> str:
    """Compute a `Stripe-Signature` header value for `payload` under every secret."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.{payload}".encode()
    parts = [f"t={t}"]
    for secret in secrets:
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        parts.append(f"v1={digest}")
    return ",".join(parts)


@dataclass(frozen=True)
class DeliveryAttempt:
    event_id: str
    attempt: int
    ok: bool
    status: int | None = None
    error: str | None = None


@dataclass
class WebhookSender:
    """POSTs event notifications to one URL, retrying failures with exponential backoff."""

    url: str | None
    secrets: tuple[str, ...]
    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    timeout: float = 5.0
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def deliver(self, event_id: str, body: str) -> bool:
        """Deliver one notification; True once the receiver answered 2xx."""
        if not self.url:
            return False
        for attempt in range(1, self.max_attempts + 1):
            if await self._attempt(event_id, body, attempt):
                return True
            if attempt < self.max_attempts:
                await asyncio.sleep(min(self.base_delay * 2 ** (attempt - 1), self.max_delay))
        return False

    async def _attempt(self, event_id: str, body: str, attempt: int) -> bool:
        if self.url is None:
            raise ValueError("deliveries need a webhook_url")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": signature_header(body, self.secrets),
        }
        try:
            session = self._client()
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with session.post(
                self.url, data=body.encode(), headers=headers, timeout=timeout
            ) as response:
                await response.read()
                ok = 200 <= response.status < 300
                self.attempts.append(DeliveryAttempt(event_id, attempt, ok, response.status))
                return ok
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.attempts.append(
                DeliveryAttempt(event_id, attempt, False, error=type(exc).__name__)
            )
            return False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

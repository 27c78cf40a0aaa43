"""The emulator's clock: real time plus a settable offset.

Every Stripe time window (24 h identifier uniqueness, 35-day timestamp window, 15-minute
session tokens, 24 h cancellation window, idempotency retention) is evaluated on this clock,
so a test can cross a boundary with `advance()` instead of waiting. Rate-limit seconds and
webhook signature timestamps deliberately stay on real time: the former measure real load,
the latter are checked by the receiver against ITS real clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall clock shifted by an offset that only ever changes through `advance`/`set`."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self._offset = float(offset_seconds)

    def now(self) -> float:
        """Current emulator time as Unix seconds (float)."""
        return time.time() + self._offset

    def now_int(self) -> int:
        """Current emulator time as whole Unix seconds, as Stripe reports `created`."""
        return int(self.now())

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (or back, if negative) and return the new time."""
        self._offset += float(seconds)
        return self.now()

    def set(self, unix_seconds: float) -> float:
        """Jump to an absolute Unix time."""
        self._offset = float(unix_seconds) - time.time()
        return self.now()

    def reset(self, offset_seconds: float = 0.0) -> None:
        self._offset = float(offset_seconds)


def rfc3339(unix_seconds: float) -> str:
    """Format like Stripe v2 timestamps: `2024-06-01T12:10:00.000Z`."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (the v2 stream's `timestamp`) to Unix seconds.

    Raises ValueError for anything that is not a timezone-qualified timestamp.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("timestamp must be a string")
    normalised = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    moment = datetime.fromisoformat(normalised)
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a timezone")
    return moment.timestamp()

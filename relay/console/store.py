"""The console's and /metrics' read door to the database: named queries of queries.sql.

Kept apart from the relay's own store (relay/store.py) while both change; every method is one
cheap statement (see the header of queries.sql) on a connection of the relay's pool.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from outbox.sqlfile import for_psycopg, load

QUERIES = load("relay.console", "queries.sql")
ATTEMPT_WINDOW_CAP = 100_000  # newest attempts read for "the last hour" (bounded on busy hours)
STATES = ("pending", "in_flight", "accepted", "failed", "rejected", "cancelled")


@dataclass(frozen=True)
class Lag:
    """The oldest unsent fact, measured from when it was recorded and from when it happened."""

    created_at: datetime | None
    occurred_at: datetime | None
    created_age: timedelta | None
    occurred_age: timedelta | None


@dataclass(frozen=True)
class HourActivity:
    """Rows finished and Stripe calls made in the last hour."""

    accepted: int
    cancelled: int
    calls: int
    errors: int
    capped: bool  # more calls than ATTEMPT_WINDOW_CAP: calls/errors cover the newest only

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


Row = dict[str, Any]


class ConsoleStore:
    """Read (and drift-report) queries; each method one statement in its own transaction."""

    def __init__(self, pool: AsyncConnectionPool, stale_after: float = 5.0) -> None:
        self.pool = pool
        self.stale_after = stale_after  # a relay unseen this long is no longer live

    async def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(for_psycopg(QUERIES[name]), params or {})
            return await cur.fetchall()

    async def state_counts(self) -> dict[str, int]:
        counts = {r["state"]: int(r["n"]) for r in await self._rows("state_counts")}
        return {state: counts.get(state, 0) for state in STATES}

    async def lag(self) -> Lag:
        (r,) = await self._rows("oldest_unsent")
        return Lag(r["created_at"], r["occurred_at"], r["created_age"], r["occurred_age"])

    async def oldest_unsent_age(self) -> timedelta | None:
        return (await self.lag()).created_age

    async def live_relay_count(self) -> int:
        return len(await self.live_relays())

    async def backing_off(self, limit: int = 20) -> list[Row]:
        return await self._rows("backing_off", {"limit": limit})

    async def last_hour(self) -> HourActivity:
        (done,) = await self._rows("finished_last_hour")
        (calls,) = await self._rows("attempts_last_hour", {"cap": ATTEMPT_WINDOW_CAP})
        return HourActivity(
            accepted=done["accepted"],
            cancelled=done["cancelled"],
            calls=calls["calls"],
            errors=calls["errors"],
            capped=bool(calls["capped"]),
        )

    async def attempt_errors(self, limit: int = 10) -> list[Row]:
        return await self._rows(
            "attempt_errors_last_hour", {"cap": ATTEMPT_WINDOW_CAP, "limit": limit}
        )

    async def failures_by_code(self, per_code: int = 5) -> list[Row]:
        return await self._rows("failures_by_code", {"per_code": per_code})

    async def failed_rows(self, code: str, limit: int = 200) -> list[Row]:
        return await self._rows("failed_rows", {"code": code, "limit": limit})

    async def customer_backlog(self, limit: int = 10) -> list[Row]:
        return await self._rows("customer_backlog", {"limit": limit})

    async def live_relays(self) -> list[Row]:
        return await self._rows("live_relays", {"stale_seconds": self.stale_after})

    async def row(self, identifier: str) -> Row | None:
        rows = await self._rows("row_story", {"identifier": identifier})
        return rows[0] if rows else None

    async def attempts(self, outbox_id: int, limit: int = 500) -> list[Row]:
        return await self._rows("row_attempts", {"outbox_id": outbox_id, "limit": limit})

    async def latest_drift_report(self) -> dict[str, Any] | None:
        """The newest drift report (meter_event_outbox_drift_reports), or None."""
        rows = await self._rows("latest_drift_report")
        return rows[0] if rows else None

    async def drift_events(self) -> float:
        """The difference found by the newest drift report (0 before the first)."""
        report = await self.latest_drift_report()
        return float(report["drift_events"]) if report else 0.0

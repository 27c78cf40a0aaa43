"""The outage breaker's shared state as operators read it: `status --json`'s `outage` object,
and the one line `status` prints and the console shows as a banner while Stripe is out.

Read from meter_event_outbox_outage (`ConsoleStore.outage_state`, `SyncStore.outage_state`),
so every replica's console and every `status` show the same; the relay keeps the row
(relay/stripe/outage.py).
"""

from datetime import datetime, timedelta
from typing import Any

from relay.db.store import OutageState


def report(state: OutageState | None) -> dict[str, Any] | None:
    """The breaker as plain data (None: a schema before outbox_0013)."""
    if state is None:
        return None
    return {
        "state": state.state,
        "since": state.since,
        "opened_at": state.opened_at,
        "closed_at": state.closed_at,
        "last_status": state.last_status,
        "calls": state.calls,
        "failed_calls": state.failed_calls,
        "probes": state.probes,
        "probe_interval_seconds": state.probe_interval,
        "next_probe_in_seconds": (
            max(0.0, state.probe_in_seconds) if state.probe_in_seconds is not None else None
        ),
        "now": state.now,
    }


def line(outage: dict[str, Any] | None) -> str | None:
    """'Stripe answers 503 for 97% of calls since 10:02 UTC; rows wait, none fail' while the
    breaker is open, else None."""
    if not outage or outage["state"] != "open":
        return None
    status = outage["last_status"]
    answer = f"answers {status}" if status else "gives no answer"
    calls, failed = outage["calls"], outage["failed_calls"]
    share = f"{100 * failed / calls:.0f}%" if calls else "all"
    return (
        f"Stripe {answer} for {share} of calls since {_clock(outage['since'], outage['now'])}; "
        "rows wait, none fail"
    )


def _clock(since: datetime | None, now: datetime) -> str:
    """HH:MM UTC, with the date when it is not within the last day."""
    if since is None:
        return "the breaker opened"
    if now - since < timedelta(hours=23):
        return since.strftime("%H:%M UTC")
    return since.strftime("%Y-%m-%d %H:%M UTC")

"""Operator tasks behind `status`, `list`, `inspect`, `retry`, `cancel` and `prune`.

Each is a few short statements from relay/db/queries.sql on a plain psycopg connection; none
counts history (the status view reads maintained counters and the small partial indexes).
"""

from datetime import UTC, datetime
from typing import Any, Unpack

import psycopg

import outbox
from outbox.dburl import psycopg_url
from relay.core.meters import HELD_CODES, WHAT_TO_DO
from relay.core.unsent import state_counts
from relay.core.vocabulary import State
from relay.db import outage
from relay.db.pool import SET_UTC, load_any_timestamp, set_prepare_sync
from relay.db.queries import ConfirmationCounts, RetryHow
from relay.db.store import RetryCandidate, SyncStore, confirmation_summary

# Relays seen within this many seconds hold a share (the relay's OUTBOX_RELAY_STALE_AFTER).
LIVE_SECONDS = 5.0


def connect(database_url: str) -> psycopg.Connection:
    """An autocommit connection that reads timestamps in UTC (infinite ones too: an operator
    must be able to look at any row) and prepares no statement behind a pooler (as the relay's
    pool)."""
    conn = psycopg.connect(psycopg_url(database_url), autocommit=True)
    load_any_timestamp(conn)
    conn.execute(SET_UTC, prepare=False)
    set_prepare_sync(conn)
    return conn


# Stripe's verdicts about the meter, not the fact: the same fact can be sent again once the
# meter is fixed (a retry keeps the identifier, which Stripe never counted).
STRIPE_METER_CODES = ("no_meter", "archived_meter", "meter_event_no_customer_defined")


def status(conn: psycopg.Connection, stale_seconds: float = LIVE_SECONDS) -> dict[str, Any]:
    """Counts per state, the true lag, what unsent rows wait for (buckets that add up to the
    unsent total), failures, live relays, a Stripe outage.

    Everything comes from the maintained tallies and index probes, never a count of rows (see
    alembic/versions/0015_status_tallies.up.sql), so it stays cheap with a million rows
    pending. Lag is measured from the oldest unsent fact's created_at, never from available_at:
    a row in backoff or waiting on auth is still unsent, however far its next attempt lies
    ahead. The JSON is open: consumers ignore keys they do not know (more may come).
    """
    store = SyncStore(conn)
    tallies = store.status_tally()
    relays: list[Any] | None
    try:
        relays = store.live_relays(stale_seconds)
    except psycopg.errors.UndefinedTable:  # schema before 0002: `migrate` adds the table
        relays = None
    lag = store.oldest_unsent()
    now = datetime.now(UTC)
    counts = state_counts(tallies)
    confirmed = _confirmation(store, counts.get("accepted", 0), now)
    return {
        "counts": {
            **counts,
            "confirmed": confirmed["confirmed"],
            "awaiting_confirmation": confirmed["awaiting"],
        },
        "confirmation": confirmed,
        "lag": {
            "oldest_unsent_created_at": lag.created_at,
            "oldest_unsent_occurred_at": lag.occurred_at,
            "created_age_seconds": _age(now, lag.created_at),
            "occurred_age_seconds": _age(now, lag.occurred_at),
        },
        "unsent": store.unsent(tallies, now),
        "failures_by_code": [
            {"state": t.state, "code": t.code or "(none)", "count": t.n}
            for t in sorted(tallies, key=lambda t: (-t.n, t.state, t.code))
            if t.state in ("failed", "rejected")
        ],
        "held_for_meter": _held_for_meter(store),
        "outage": outage.report(store.outage_state()),
        "meter_reads": _meter_problems(store),
        "relays": None
        if relays is None
        else [{"relay_id": r.relay_id, "started_at": r.started_at} for r in relays],
    }


def _confirmation(store: SyncStore, accepted: int, now: datetime) -> dict[str, Any]:
    """Accepted rows against Stripe's totals: a separate, indexed read (the groups not
    confirmed), so the state counts above stay as they are."""
    try:
        counts = store.confirmation_counts()
    except psycopg.errors.UndefinedTable:  # schema before 0016: `migrate` adds the table
        conn = store.conn
        if not conn.autocommit:
            conn.rollback()
        return confirmation_summary(ConfirmationCounts(0, 0, 0, 0, None), accepted, now)
    return confirmation_summary(counts, accepted, now)


def _held_for_meter(store: SyncStore) -> list[dict[str, Any]]:
    """Rows held because Stripe would drop them, by account, event name and reason."""
    try:
        groups = store.held_by_meter()
    except psycopg.errors.UndefinedTable:  # schema before 0008
        return []
    return [
        {
            "stripe_account": g.account or None,
            "event_name": g.event_name,
            "code": g.code,
            "rows": g.n,
            "oldest_occurred_at": g.oldest_occurred_at,
            "what_to_do": WHAT_TO_DO.get(g.code, ""),
        }
        for g in groups
    ]


def _meter_problems(store: SyncStore) -> list[dict[str, Any]]:
    """Accounts whose meters the relay could not read last time (with why)."""
    try:
        reads = store.meter_reads()
    except psycopg.errors.UndefinedTable:  # schema before 0008
        return []
    return [
        {"stripe_account": r.account or None, "outcome": r.outcome, "detail": r.detail}
        for r in reads
        if r.outcome != "ok"
    ]


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then else 0.0


def lag_exceeded(data: dict[str, Any], seconds: float | None) -> bool:
    return seconds is not None and data["lag"]["created_age_seconds"] > seconds


def failed_exceeded(data: dict[str, Any], n: int | None) -> bool:
    return n is not None and data["counts"].get("failed", 0) >= n


def list_rows(conn: psycopg.Connection, **filters: Any) -> list[dict[str, Any]]:
    """Rows matching every given filter, newest first."""
    return SyncStore(conn).list_rows(**filters)


def inspect(conn: psycopg.Connection, identifier: str) -> dict[str, Any] | None:
    """Everything known about one usage fact, a one-line summary and its attempts, or None."""
    store = SyncStore(conn)
    row = store.row_story(identifier)
    if row is None:
        return None
    del row["due_in"]  # the console's; `summary` says when the row is due
    attempts = store.row_attempts(row["id"])
    if row["state"] == "rejected":  # accepted for processing, then refused: never billed
        row["accepted_for_processing_at"] = row.pop("accepted_at")
    row["confirmation"] = store.row_confirmation(identifier)
    return {**row, "summary": summary(row, attempts, datetime.now(UTC)), "history": attempts}


def summary(row: dict[str, Any], attempts: list[dict[str, Any]], now: datetime) -> str:
    """What an operator needs first: where the fact stands and what happens next."""
    last = attempts[-1] if attempts else None
    state: State = row["state"]  # typed: mypy checks the spellings below
    code = row["last_error_code"]
    if state == "accepted":
        request = f", {row['stripe_request_id']}" if row["stripe_request_id"] else ""
        return (
            f"accepted by Stripe at {_iso(row['accepted_at'])}{request}; "
            f"{_confirmation_line(row.get('confirmation'))}"
        )
    if state == "rejected" and row.get("inferred_from"):
        source = row["inferred_from"]
        because = "no error report named it" if source == "summaries" else f"error report {source}"
        return (
            f"rejected ({code}), inferred: Stripe's total for its customer, meter and hour is 0 "
            f"({because}); not billed; record a corrected fact anew"
        )
    if state == "rejected" and code in STRIPE_METER_CODES:
        return (
            f"rejected by Stripe ({code}): not billed; the event did not match a meter: fix "
            "the meter (`outbox-relay doctor`), then `outbox-relay retry` it"
        )
    if state == "rejected":
        return f"rejected by Stripe ({code}): not billed; record a corrected fact anew"
    if state == "cancelled":
        return f"cancelled at {_iso(row['cancelled_at'])}"
    if state == "failed":
        return f"failed ({code}) after {row['attempts']} attempt(s): retry or cancel it"
    if state == "in_flight" and row["available_at"] <= now:
        return (
            f"in flight: its lease ran out (leased by {row['leased_by']}, which died or stalled "
            "after its call may have reached Stripe); the next claim sends it again, same key"
        )
    if state == "in_flight":
        return f"in flight: a call is running (leased by {row['leased_by']})"
    wait = max(0.0, (row["available_at"] - now).total_seconds())
    doing = "cancelling" if row["action"] == "cancel" else "retrying"
    if last is None and code is None:
        return f"waiting to be sent (recorded {_iso(row['created_at'])})"
    if code in HELD_CODES:
        return f"held, not sent ({code}): {WHAT_TO_DO[code]}; looked at again in {wait:.0f} s"
    status = last["http_status"] if last and last["http_status"] else code
    return f"{doing}: attempt {row['attempts'] + 1}, next in {wait:.0f} s, last {status}"


def _confirmation_line(c: dict[str, Any] | None) -> str:
    """An accepted row against Stripe's totals (its group's comparison)."""
    if c is None:
        return "awaiting confirmation against Stripe's hourly totals"
    if c["confirmed"]:
        return f"confirmed at {_iso(c['confirmed_at'])} by Stripe's summary {c['summary_id']}"
    if c["group_state"] == "drift":
        return (
            f"its hour drifts: Stripe counted {c['stripe_value']}, our accepted rows "
            f"{c['value']} (`outbox-relay drift`)"
        )
    if c["group_state"] == "not_confirmable":
        return f"not confirmable: {c['detail']}"
    return "awaiting confirmation against Stripe's hourly totals"


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else "-"


def retry_preview(conn: psycopg.Connection, **how: Unpack[RetryHow]) -> list[RetryCandidate]:
    """The rows `retry` with these filters would requeue or refuse (changes nothing)."""
    return SyncStore(conn).retry(dry_run=True, **how)


def not_retryable(conn: psycopg.Connection, identifier: str) -> str | None:
    """Why `retry IDENTIFIER` cannot apply (unknown, or not failed/rejected), or None."""
    found = SyncStore(conn).row_state(identifier)
    if found is None:
        return f"no usage recorded with identifier {identifier!r} (never recorded, or pruned)"
    if found.state not in ("failed", "rejected"):
        return (
            f"{identifier} is {found.state} ({found.action}): only failed or rejected rows are "
            "retried"
        )
    return None


def retry(
    conn: psycopg.Connection, **how: Unpack[RetryHow]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Requeue failed rows, and rejected ones unless `rejected` is False; returns (requeued,
    refused-as-unsafe), from one statement."""
    matched = SyncStore(conn).retry(**how)
    requeued = [r.identifier for r in matched if not r.refused]
    refused = [
        {
            "identifier": r.identifier,
            "state": r.state,
            "code": r.code,
            "first_attempt_at": r.first_attempt_at,
            "reason": r.reason,
        }
        for r in matched
        if r.refused
    ]
    return requeued, refused


def rejected_count(conn: psycopg.Connection, code: str | None) -> int:
    """Rejected rows (with this code): what `retry --all` leaves out unless asked."""
    return SyncStore(conn).rejected_count(code)


def cancel(conn: psycopg.Connection, identifier: str) -> outbox.CancelRequest:
    """The operator's cancel: the same path applications use (outbox.cancel_usage)."""
    result = outbox.cancel_usage(conn, identifier=identifier)
    if not isinstance(result, outbox.CancelRequest):  # a sync connection answers at once
        raise TypeError(f"cancel_usage on a sync connection returned {type(result).__name__}")
    return result


class RecoverRefused(Exception):
    """`recover` would do harm now (logical replication still applies changes here)."""


def recover(conn: psycopg.Connection) -> dict[str, Any]:
    """After the database was moved without its UNLOGGED tables (logical replication skips
    them; a copy of the data only) into a schema whose migration wrote their markers anew: do
    what the first fold after a crash of PostgreSQL does, which no fold can know to do there.
    Every row recorded so far then "may have been sent" (a cancel of a report that was at
    Stripe waits for its outcome, as after a crash), and the tallies are recounted from the
    outbox. Safe to run on a healthy database: it costs a recount (about 8 s per ten million
    rows) and one extra, idempotent call for each such row cancelled later. What it cannot do
    is returned for the operator: a recount that waits for prepared transactions, and the
    outbox's sequences behind their tables (replication does not carry them; their owner sets
    them)."""
    store = SyncStore(conn)
    if subscriptions := store.subscriptions_enabled():
        raise RecoverRefused(
            f"logical replication still applies changes to this database (subscription "
            f"{', '.join(subscriptions)}): recover once the move is over, when the source takes "
            "no more writes and the subscription is disabled or dropped"
        )
    done = store.recover()
    behind = store.sequences_behind()
    return {
        "possibly_sent_below": done.possibly_sent_below,
        "tallies_recounted": done.recounted,
        "prepared_transactions": done.prepared,  # 0 once recounted (`recovered`)
        "sequences_behind": [{"sequence": b.sequence, "fix": b.fix} for b in behind],
        "finished": done.recounted and not behind,
    }


# Stripe dedups identifiers over a rolling 24 h and accepts cancellations for 24 h after
# receipt: a row pruned sooner could be recorded and sent again, or no longer be cancelled.
PRUNE_FLOOR_DAYS = 1.0


def prune_refusal(older_than_days: float, force: bool) -> str | None:
    """Why a prune with this retention is refused (inside Stripe's windows), or None."""
    if older_than_days < PRUNE_FLOOR_DAYS and not force:
        return (
            f"--older-than-days {older_than_days:g} is inside Stripe's 24 h dedup and cancel "
            "windows: a pruned row could be recorded again or no longer be cancelled "
            "(--force to prune anyway)"
        )
    return None


def prune_preview(conn: psycopg.Connection, *, older_than_days: float) -> dict[str, Any]:
    """How many rows a prune would delete, and their oldest/newest update time."""
    return SyncStore(conn).prune_preview(age_seconds=older_than_days * 86400)


def prune(
    conn: psycopg.Connection,
    *,
    older_than_days: float,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> int:
    """Delete accepted/cancelled rows older than the retention, in bounded batches."""
    if batch_size < 1 or not older_than_days > 0:  # 0 looped forever; -1 deleted fresh rows
        raise ValueError("prune needs batch_size >= 1 and older_than_days > 0")
    store = SyncStore(conn)
    # The ranges the previous prune freed hold the rows that refilled them since: summarized
    # now, tight; this run's batches forget the ranges they delete from (outbox_0025). A role
    # granted before that migration may not: it prunes and the ranges only stay wider.
    tend = store.may_tend_ranges()
    if tend:
        store.summarize_ranges()
    total = batches = 0
    while max_batches is None or batches < max_batches:
        blocks = store.prune(age_seconds=older_than_days * 86400, batch_size=batch_size)
        if tend and blocks:
            store.forget_ranges(blocks)
        deleted = len(blocks)
        total += deleted
        batches += 1
        if deleted < batch_size:
            break
    return total


def unsent_rows(conn: psycopg.Connection) -> int:
    """Rows not (yet) reported to Stripe: pending, in flight or failed."""
    return SyncStore(conn).unsent_count()

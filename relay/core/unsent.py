"""What unsent rows wait for: the buckets of `status`, its --json and the console's overview.

Every unsent row is in exactly one bucket, so the buckets add up to the unsent total (pending
plus in flight). A pending row's bucket follows from its last code alone (the relay writes a
code on every row it puts back, see relay.stripe.policy), plus, for a code the relay does not
know, the HTTP status of the row's last answer (a Stripe code on a 401/403 means the auth gate
holds the row). The tallies (alembic/versions/0015_status_tallies.up.sql) count rows per state
and code, so the buckets cost a read of a few tally rows, never a count of the backlog.
docs/operations.md has what each bucket means and what to do.
"""

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Literal, get_args

from relay.core.meters import HELD_CODES
from relay.core.vocabulary import (
    ACCOUNT_REFUSED,
    KEY_REFUSED,
    RELAY_ERROR,
    SHUTDOWN,
    STATES,
    STREAM_WAIT_EXPIRED,
    STRIPE_OUTAGE,
    TIMESTAMP_IN_FUTURE,
)

Bucket = Literal[
    "due",
    "in_flight",
    "retrying_no_answer",
    "rate_limited",
    "held_auth",
    "held_meter",
    "held_outage",
    "scheduled_later",
    "put_back",
    "retrying",
]
BUCKETS: Final[tuple[Bucket, ...]] = get_args(Bucket)

TITLES: Final[dict[Bucket, str]] = {
    "due": "due now, waiting for a relay",
    "in_flight": "in flight",
    "retrying_no_answer": "retrying: Stripe did not answer (connection error, 5xx)",
    "rate_limited": "rate limited by Stripe, retrying slower",
    "held_auth": "held: key or account refused (401/403), waiting for the auth probe",
    "held_meter": "held: meter unusable, Stripe would drop the events",
    "held_outage": "held: Stripe outage, one probe at a time until Stripe answers",
    "scheduled_later": "scheduled later: happened in the future, sent once inside Stripe's window",
    "put_back": "put back by the relay without an answer (shutdown, crash, stream wait)",
    "retrying": "retrying after another answer from Stripe",
}

NO_ANSWER_CODES: Final = frozenset({"connection_error", "idempotency_error"})
RATE_CODES: Final = frozenset(
    {"rate_limited", "rate_limit", "too_many_concurrent_requests", "lock_timeout", "http_429"}
)
AUTH_CODES: Final = frozenset({KEY_REFUSED, ACCOUNT_REFUSED, "http_401", "http_403"})
AUTH_STATUSES: Final = frozenset({401, 403})
PUT_BACK_CODES: Final = frozenset({SHUTDOWN, RELAY_ERROR, STREAM_WAIT_EXPIRED})


def bucket_of(code: str, last_status: int | None = None) -> Bucket:
    """The bucket of pending rows with this last code ('' = none). `last_status` is the HTTP
    status of the last answer to such a row, needed only when `needs_status(code)`."""
    if not code:
        return "due"
    if code in HELD_CODES:
        return "held_meter"
    if code == STRIPE_OUTAGE:
        return "held_outage"
    if code in AUTH_CODES or last_status in AUTH_STATUSES:
        return "held_auth"
    if code in RATE_CODES or last_status == 429:
        return "rate_limited"
    if code == TIMESTAMP_IN_FUTURE:
        return "scheduled_later"
    if code in PUT_BACK_CODES:
        return "put_back"
    if code in NO_ANSWER_CODES or _is_5xx(code) or (last_status or 0) >= 500:
        return "retrying_no_answer"
    return "retrying"


def needs_status(code: str) -> bool:
    """Whether the bucket of this code depends on the last answer's status: a code Stripe sent
    (any string) may come with a 401/403 (held by the auth gate), a 429 or a 5xx."""
    known = HELD_CODES + tuple(AUTH_CODES | RATE_CODES | NO_ANSWER_CODES | PUT_BACK_CODES)
    return (
        bool(code)
        and code not in known
        and code not in (TIMESTAMP_IN_FUTURE, STRIPE_OUTAGE)
        and not _is_5xx(code)
    )


def _is_5xx(code: str) -> bool:
    return code.startswith("http_5") and len(code) == 8 and code[5:].isdigit()


def split(
    tallies: Iterable[tuple[str, str, str, int]],
    next_attempts: Mapping[str, datetime],
    last_status: Mapping[str, int | None],
    now: datetime,
) -> dict[str, Any]:
    """The unsent rows by bucket, from the tallies' (state, code, account, rows) of pending and
    in-flight rows: every bucket (in order, empty ones too), each with its rows and its groups
    (code, account, rows, next attempt). The buckets' rows add up to `total`."""
    buckets: dict[str, dict[str, Any]] = {
        b: {"title": TITLES[b], "rows": 0, "groups": []} for b in BUCKETS
    }
    total = 0
    for state, code, account, n in tallies:
        if state not in ("pending", "in_flight"):
            continue
        total += n
        bucket: Bucket = (
            "in_flight" if state == "in_flight" else bucket_of(code, last_status.get(code))
        )
        buckets[bucket]["rows"] += n
        if code:
            buckets[bucket]["groups"].append(_group(code, account, n, next_attempts.get(code), now))
    for b in buckets.values():
        b["groups"].sort(key=lambda g: (-g["rows"], g["code"], g["stripe_account"] or ""))
    return {"total": total, "buckets": buckets}


def _group(
    code: str, account: str, n: int, next_at: datetime | None, now: datetime
) -> dict[str, Any]:
    return {
        "code": code,
        "stripe_account": account or None,
        "rows": n,
        "next_attempt_at": next_at,
        "next_attempt_in_seconds": None
        if next_at is None
        else max(0.0, (next_at - now).total_seconds()),
    }


def state_counts(tallies: Iterable[tuple[str, str, str, int]]) -> dict[str, int]:
    """Rows per state (every state, in order), from the same tallies as the buckets."""
    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    for state, _, _, n in tallies:
        if state in counts:
            counts[state] += n
    return counts

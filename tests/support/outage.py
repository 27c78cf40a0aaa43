"""A seeded outage: unsent rows in every bucket of `status` (relay.core.unsent), plus settled
rows that must not count as unsent. Shared by the status test and the console's browser test."""

import psycopg

# bucket -> (code, account, rows) per group; the bucket's rows are the groups' sum ('' = none).
SEEDED: dict[str, list[tuple[str, str | None, int]]] = {
    "due": [("", None, 4)],
    "in_flight": [("", None, 2)],
    "retrying_no_answer": [("connection_error", None, 3), ("http_503", None, 2)],
    "rate_limited": [("rate_limited", None, 1)],
    "held_auth": [("account_access_refused", "acct_a", 2), ("api_key_expired", None, 1)],
    "held_meter": [("meter_missing", None, 2)],
    "held_outage": [("stripe_outage", None, 2)],
    "scheduled_later": [("timestamp_in_future", None, 1)],
    "put_back": [("shutdown", None, 1)],
    "retrying": [("conflict", None, 1)],
}
SETTLED = {"accepted": 2, "failed": 1}
UNSENT = sum(n for groups in SEEDED.values() for _, _, n in groups)
NEXT_ATTEMPT_SECONDS = 30  # every coded row's next attempt


def seed_outage(database_url: str) -> None:
    """Insert the rows of SEEDED and SETTLED as the relay leaves them. `api_key_expired` is a
    code of Stripe's whose last answer was a 401: the auth gate holds it."""
    n = 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        for bucket, groups in SEEDED.items():
            for code, account, rows in groups:
                for _ in range(rows):
                    n += 1
                    _insert(conn, f"o{n}", bucket, code or None, account)
        for state, rows in SETTLED.items():
            for _ in range(rows):
                n += 1
                _insert(conn, f"o{n}", state, "boom" if state == "failed" else None, None)


def _insert(
    conn: psycopg.Connection, identifier: str, bucket: str, code: str | None, account: str | None
) -> None:
    conn.execute(
        "SELECT outbox_record_usage('api_calls', 'cus_' || %s, 1, %s, stripe_account => %s)",
        (identifier, identifier, account),
    )
    if bucket == "due":
        return
    if bucket == "in_flight":
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = gen_random_uuid(),"
            " available_at = now() + interval '60 seconds' WHERE identifier = %s",
            (identifier,),
        )
        return
    state = bucket if bucket in SETTLED else "pending"
    (outbox_id,) = conn.execute(
        "UPDATE meter_event_outbox SET state = %s, last_error_code = %s, attempts = 1,"
        " first_attempt_at = now(), available_at = now() + make_interval(secs => %s),"
        " accepted_at = CASE WHEN %s = 'accepted' THEN now() END"
        " WHERE identifier = %s RETURNING id",
        (state, code, NEXT_ATTEMPT_SECONDS, state, identifier),
    ).fetchone()
    if code == "api_key_expired":
        conn.execute(
            "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation,"
            " action, state, http_status, code) VALUES (%s, 1, 0, 'report', 'pending', 401, %s)",
            (outbox_id, code),
        )

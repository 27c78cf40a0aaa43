"""The buckets of unsent rows (relay.core.unsent): every code lands in one bucket, and the
buckets add up to the unsent total whatever the tallies hold."""

from datetime import UTC, datetime, timedelta

from relay.core.meters import HELD_CODES
from relay.core.unsent import BUCKETS, bucket_of, needs_status, split, state_counts

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_codes_land_in_their_bucket() -> None:
    assert bucket_of("") == "due"
    assert bucket_of("connection_error") == bucket_of("http_503") == "retrying_no_answer"
    assert bucket_of("rate_limited") == bucket_of("http_429") == "rate_limited"
    assert bucket_of("account_access_refused") == bucket_of("api_key_refused") == "held_auth"
    assert all(bucket_of(code) == "held_meter" for code in HELD_CODES)
    assert bucket_of("stripe_outage") == "held_outage"
    assert bucket_of("timestamp_in_future") == "scheduled_later"
    assert bucket_of("shutdown") == "put_back"
    assert bucket_of("conflict") == "retrying"


def test_a_stripe_code_goes_by_the_status_of_its_last_answer() -> None:
    assert needs_status("api_key_expired") and not needs_status("http_503")
    assert bucket_of("api_key_expired", 401) == "held_auth"
    assert bucket_of("secret_code", 503) == "retrying_no_answer"
    assert bucket_of("secret_code", 400) == bucket_of("secret_code") == "retrying"


def test_the_buckets_add_up_to_the_unsent_total() -> None:
    tallies = [
        ("pending", "", "", 7),
        ("in_flight", "", "", 2),
        ("pending", "http_503", "", 3),
        ("pending", "account_access_refused", "acct_a", 4),
        ("pending", "weird\x1b", "", 1),
        ("failed", "boom", "", 5),
        ("accepted", "", "", 100),
    ]
    out = split(tallies, {"http_503": NOW + timedelta(seconds=30)}, {}, NOW)
    assert list(out["buckets"]) == list(BUCKETS)
    assert out["total"] == 17 == sum(b["rows"] for b in out["buckets"].values())
    (group,) = out["buckets"]["retrying_no_answer"]["groups"]
    assert group["next_attempt_in_seconds"] == 30.0
    assert out["buckets"]["held_auth"]["groups"][0]["stripe_account"] == "acct_a"
    counts = state_counts(tallies)
    assert counts["pending"] + counts["in_flight"] == out["total"]

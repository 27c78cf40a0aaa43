"""The lean client's pure parts: body encoding and reading an answer into the table's view."""

from datetime import UTC, datetime, timedelta, timezone

from relay.core.rows import Claimed
from relay.stripe.calls import answer_of_failure, answer_of_response, form_body, stream_body
from relay.stripe.classify import Answer, Verdict, classify
from tests.unit.rows import claimed


def row(identifier: str, payload: dict[str, str], occurred_at: datetime) -> Claimed:
    return claimed(identifier=identifier, payload=payload, occurred_at=occurred_at)


def test_form_body_keeps_brackets_and_plus_encodes_utf8() -> None:
    r = row(
        "id 1",
        {"stripe_customer_id": "cus_é", "k[0]": "a&b=c+d/🎉"},
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert form_body(r) == (
        b"event_name=api_calls&payload[stripe_customer_id]=cus_%C3%A9"
        b"&payload[k[0]]=a%26b%3Dc%2Bd%2F%F0%9F%8E%89&identifier=id+1&timestamp=1767225600"
    )


def test_form_body_timestamp_is_whole_unix_seconds_of_any_zone() -> None:
    local = datetime(2026, 1, 1, 1, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=1)))
    assert form_body(row("i", {}, local)).endswith(b"&timestamp=1767225600")


def test_stream_body_is_ascii_json_with_utc_millisecond_stamps() -> None:
    local = datetime(2026, 3, 4, 5, 6, 7, 891_999, tzinfo=timezone(timedelta(hours=-7)))
    body = stream_body([row("ü", {"v": "é"}, local)])
    assert body == (
        b'{"events": [{"event_name": "api_calls", "payload": {"v": "\\u00e9"},'
        b' "identifier": "\\u00fc", "timestamp": "2026-03-04T12:06:07.891Z"}]}'
    )


def test_answer_reads_the_error_object() -> None:
    body = b'{"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}}'
    answer = answer_of_response(400, "req_1", body)
    assert answer == Answer(400, "invalid_request_error", "rate_limit", "slow", "req_1")
    assert classify(answer).verdict is Verdict.RETRY_SLOWER


def test_unreadable_error_body_still_classifies_by_status() -> None:
    answer = answer_of_response(502, None, b"<html>bad gateway</html>")
    assert answer.status == 502 and answer.code is None
    assert "bad gateway" in (answer.message or "")
    assert classify(answer).verdict is Verdict.RETRY_NEW_KEY


def test_success_keeps_only_the_request_id() -> None:
    result = classify(answer_of_response(200, "req_9", b"{}"))
    assert (result.verdict, result.request_id) == (Verdict.ACCEPTED, "req_9")


def test_no_answer_is_a_connection_error_retried_with_the_same_key() -> None:
    result = classify(answer_of_failure(ConnectionResetError()))
    assert (result.verdict, result.code, result.message) == (
        Verdict.RETRY_SAME_KEY,
        "connection_error",
        "ConnectionResetError",
    )


def test_idempotency_error_is_a_bug_only_as_a_400() -> None:
    """A 409 idempotency_error is a concurrent call with the key: retried, not failed."""
    assert classify(Answer(400, "idempotency_error")).verdict is Verdict.FAILED_BUG
    assert classify(Answer(409, "idempotency_error")).verdict is Verdict.RETRY_SOON

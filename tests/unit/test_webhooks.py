"""Webhook signature checking, payload parsing and identifier matching: pure functions, an
injected clock."""

import hashlib
import hmac
import json

import pytest

from relay.stripe.webhooks import (
    BadDelivery,
    key_fallbacks,
    parse_notification,
    parse_signature_header,
    rejected_identifiers,
    verify_signature,
)

SECRET = "whsec_unit"
NOW = 1_800_000_000.0
BODY = json.dumps({"id": "evt_1", "type": "v1.billing.meter.error_report_triggered"}).encode()


def signed(body: bytes, at: float, secret: str = SECRET) -> str:
    """A header as Stripe builds it: v1 = HMAC-SHA256(secret, "<t>.<body>")."""
    t = int(at)
    return f"t={t},v1={hmac.new(secret.encode(), b'%d.' % t + body, hashlib.sha256).hexdigest()}"


def reason(body: bytes, header: str | None, now: float = NOW) -> str:
    with pytest.raises(BadDelivery) as caught:
        verify_signature(body, header, SECRET, now)
    return caught.value.reason


def test_a_fresh_signature_passes() -> None:
    verify_signature(BODY, signed(BODY, NOW - 10), SECRET, NOW)


def test_any_v1_signature_may_match_while_a_secret_is_rolled() -> None:
    old = signed(BODY, NOW, "whsec_old").split(",")[1]
    verify_signature(BODY, f"{signed(BODY, NOW)},{old}", SECRET, NOW)
    verify_signature(BODY, f"t={int(NOW)},{old},{signed(BODY, NOW).split(',')[1]}", SECRET, NOW)


@pytest.mark.parametrize("offset", [86_400, 301, -301, -86_400])
def test_a_signature_dated_beyond_the_tolerance_either_way_is_refused(offset: int) -> None:
    assert reason(BODY, signed(BODY, NOW + offset)) == "stale_signature"


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_the_tolerance_is_inclusive(offset: int) -> None:
    verify_signature(BODY, signed(BODY, NOW + offset), SECRET, NOW)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "v1=abc",
        f"t={int(NOW)}",
        f"t=soon,v1={'0' * 64}",
        f"t=١٢,v1={'0' * 64}",  # non-ASCII digits are not a timestamp
        f"t={int(NOW)},v0={'0' * 64}",
        f"t={int(NOW)},v1={'0' * 64}",
        signed(BODY, NOW, "whsec_other"),
        signed(BODY + b" ", NOW),
    ],
)
def test_a_missing_malformed_or_wrong_signature_is_refused(header: str | None) -> None:
    assert reason(BODY, header) == "bad_signature"


def test_the_header_is_read_leniently() -> None:
    assert parse_signature_header(" t=5 , v1=aa,v1=bb,v0=cc,junk") == (5, ["aa", "bb"])


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"evt_1"',
        b"{}",
        b'{"id": "evt_1"}',
        b'{"id": 7, "type": "x"}',
        b'{"id": "", "type": "x"}',
        b'{"id": "evt_1", "type": ["x"]}',
        b"[" * 100_000,
    ],
)
def test_a_body_without_a_string_id_and_type_is_malformed(body: bytes) -> None:
    with pytest.raises(BadDelivery) as caught:
        parse_notification(body)
    assert caught.value.reason == "malformed"


def test_a_thin_event_gives_its_id_and_type() -> None:
    note = parse_notification(BODY)
    assert (note.id, note.type) == ("evt_1", "v1.billing.meter.error_report_triggered")


def test_error_report_samples_are_grouped_by_code() -> None:
    data = {
        "developer_message_summary": "2 events failed",
        "reason": {
            "error_types": [
                {
                    "code": "meter_event_customer_not_found",
                    "sample_errors": [
                        {"error_message": "no customer", "request": {"identifier": "a"}},
                        {"request": {"identifier": "b#g1"}},
                        {"request": {}},
                    ],
                },
                {"code": "no_meter", "sample_errors": []},
                {"sample_errors": [{"request": {"identifier": "c"}}]},
            ]
        },
    }
    assert rejected_identifiers(data) == {
        "meter_event_customer_not_found": (["a", "b#g1"], "no customer"),
        "meter_error": (["c"], "2 events failed"),
    }
    assert rejected_identifiers({}) == {}


def test_unmatched_samples_are_retried_as_idempotency_keys() -> None:
    # b#g1 matched no identifier: it is row b's key of generation 1.
    assert key_fallbacks(["a", "b#g1"], matched=["a"]) == ["b"]


def test_a_sample_that_matched_or_has_no_suffix_is_not_retried() -> None:
    assert key_fallbacks(["x#g1"], matched=["x#g1"]) == []  # an identifier ending in #g1
    assert key_fallbacks(["plain"], matched=[]) == []
    assert key_fallbacks(["d#g2", "d#g3"], matched=[]) == ["d"]


def test_a_non_ascii_v1_value_is_a_bad_signature_not_a_crash() -> None:
    assert reason(BODY, f"t={int(NOW)},v1=\u00e9\u00e9") == "bad_signature"
    good = signed(BODY, NOW)
    verify_signature(BODY, good + ",v1=\u00e9", SECRET, NOW)  # a rolled secret's odd sibling

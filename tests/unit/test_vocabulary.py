"""The shared vocabulary: the words agree with the table, the classification table and the
outbox rules; outcomes are built only by their named constructors, which say how each was
decided."""

from outbox.rules import WINDOW_PROBLEMS
from relay.core.rows import Outcome
from relay.core.vocabulary import RELAY_CODES, is_relay_code
from relay.stripe.classify import TABLE, for_answer
from tests.unit.rows import claimed


def test_every_code_the_classification_table_writes_is_a_relay_code() -> None:
    for name, rule in TABLE.items():
        for code in (rule.code, rule.fallback):
            assert code is None or code in RELAY_CODES, (name, code)
        written = for_answer(name, http_status=418).code
        assert written is None or is_relay_code(written), (name, written)


def test_the_outbox_rules_window_codes_are_relay_codes() -> None:
    assert set(WINDOW_PROBLEMS) <= RELAY_CODES


def test_a_code_stripe_sent_is_not_a_relay_code() -> None:
    assert is_relay_code("http_503") and is_relay_code("shutdown")
    assert not is_relay_code("api_key_expired")  # Stripe's own word for an expired key
    assert not is_relay_code("http_5031") and not is_relay_code(None)


def test_each_named_outcome_says_how_it_was_decided() -> None:
    row = claimed()
    shapes = {
        o.kind: (o.state, o.counted, o.called, o.reached_stripe)
        for o in (
            Outcome.answered(row, "accepted", request_id="req_1", http_status=200),
            Outcome.refused(row, "dedup_window_expired", "too old", may_have_counted=True),
            Outcome.unsent(row, "shutdown", "not sent"),
            Outcome.released(row, "relay_error", "crashed", 5.0, called=True, counted=1),
        )
    }
    assert shapes == {
        "answered": ("accepted", 1, True, True),
        "refused": ("failed", 0, False, False),
        "unsent": ("pending", 0, False, False),
        "released": ("pending", 1, True, True),
    }


def test_a_decision_copied_to_another_row_differs_only_in_the_row() -> None:
    first, other = claimed(id=1), claimed(id=2, identifier="u2")
    decided = Outcome.answered(first, "accepted", request_id="req_1", latency_ms=3.0)
    (copied,) = decided.for_rows([other])
    assert copied.row is other and copied._replace(row=first) == decided
    assert copied.decision() == decided.decision()
    # Rows answered alike share a decision whatever their request ids and latencies.
    again = Outcome.answered(other, "accepted", request_id="req_2", latency_ms=9.0)
    assert again.shared() == decided.shared() and again.decision() != decided.decision()
    assert Outcome.answered(other, "failed", request_id="req_1").shared() != decided.shared()
    long = Outcome.released(first, "shutdown", "x" * 600, 0.0, called=False, counted=0)
    assert long.message == "x" * 500  # the row's column holds at most 500 characters

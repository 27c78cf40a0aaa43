"""Example tests of an application's usage recording (SQLAlchemy), with outbox.testing."""

from sqlalchemy import Engine
from sqlalchemy.orm import Session

import outbox


def handle_api_request(session: Session, customer: str, request_id: str, calls: int) -> None:
    """The application's code under test: its own writes, then the usage fact."""
    outbox.record_usage(
        session,
        event_name="api_calls",
        customer=customer,
        value=calls,
        identifier=f"req-{request_id}",
    )


def test_usage_is_recorded_in_the_request_transaction(session: Session, outbox_facts) -> None:
    handle_api_request(session, "cus_1", "r1", 3)
    handle_api_request(session, "cus_1", "r2", 2)
    handle_api_request(session, "cus_2", "r3", 1)
    # Read through the test's own session: the facts of its open transaction count.
    outbox_facts.assert_exactly(
        [{"identifier": "req-r1", "value": 3}, {"identifier": "req-r2", "value": 2}],
        session,
        customer="cus_1",
    )


def test_what_stripe_bills(engine: Engine, outbox_stripe) -> None:
    with Session(engine) as session, session.begin():  # committed: the relay sees it
        handle_api_request(session, "cus_1", "r1", 3)
        handle_api_request(session, "cus_1", "r1", 3)  # a retried request: recorded once
        handle_api_request(session, "cus_2", "r2", 5)
    assert outbox_stripe.drain() == {"accepted": 2}
    assert outbox_stripe.billed("api_calls", "cus_1") == 3
    assert outbox_stripe.counted("req-r1") == 1

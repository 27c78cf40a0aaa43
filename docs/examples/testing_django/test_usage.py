"""Example tests of a Django application's usage recording, with outbox.testing."""

import pytest
from django.core.management import call_command
from django.db import connection


@pytest.mark.django_db  # a transaction rolled back after the test
def test_usage_is_recorded_in_the_test_transaction(outbox_facts) -> None:
    call_command("bill_request", "r1", "cus_django")
    call_command("bill_request", "r1", "cus_django")  # replayed: still one fact
    call_command("bill_request", "r2", "cus_django", "--fail")  # rolled back: none
    with connection.cursor() as cursor:
        outbox_facts.assert_exactly(
            [{"identifier": "api-req-r1", "event_name": "api_calls", "value": 1}],
            cursor,
            customer="cus_django",
        )


@pytest.mark.django_db(transaction=True)  # committed for real, so the relay can send it
def test_what_stripe_bills(outbox_stripe) -> None:
    call_command("bill_request", "r1", "cus_django")
    call_command("bill_request", "r2", "cus_django")
    assert outbox_stripe.drain() == {"accepted": 2}
    assert outbox_stripe.billed("api_calls", "cus_django") == 2

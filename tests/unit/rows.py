"""Claimed rows built in memory for the unit tests (no database)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.rows import Claimed

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def claimed(**overrides: Any) -> Claimed:
    values: dict[str, Any] = {
        "id": 1,
        "lease_token": uuid.UUID(int=1),
        "identifier": "u1",
        "event_name": "api_calls",
        "customer": "cus_1",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
        "occurred_at": NOW - timedelta(minutes=1),
        "stripe_account": None,
        "action": "report",
        "attempts": 0,
        "key_generation": 0,
        "previous_first_attempt_at": None,
        "first_attempt_at": NOW,
        "accepted_at": None,
        "created_at": NOW - timedelta(minutes=1),
    }
    values.update(overrides)
    return Claimed(**values)

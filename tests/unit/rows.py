"""Claimed rows built in memory for the unit tests (no database)."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.core.rows import Claimed

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def claimed(**overrides: Any) -> Claimed:
    values: dict[str, Any] = {
        "id": 1,
        "lease_token": uuid.UUID(int=1),
        "identifier": "u1",
        "event_name": "api_calls",
        "customer": "cus_1",
        "payload_json": '{"value": "1", "stripe_customer_id": "cus_1"}',
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
    if "payload" in overrides:  # a dict, stored as PostgreSQL prints it (non-ASCII raw)
        overrides["payload_json"] = json.dumps(overrides.pop("payload"), ensure_ascii=False)
    values.update(overrides)
    return Claimed(**values)

"""What recording a fact returns, and how a fact is compared with the row already stored under
its identifier (a replay returns that row; any difference is a conflict)."""

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from outbox.validate import UsageFact


@dataclass(frozen=True, slots=True)
class RecordedUsage:
    """The outbox row holding a usage fact; `created` is False for a replay."""

    id: int
    identifier: str
    created: bool


def stored_differences(fact: UsageFact, row: tuple[Any, ...]) -> list[str]:
    """Fields of `fact` that differ from the stored row (id, event_name, customer, value,
    dimensions, occurred_at, stripe_account); an omitted timestamp matches any."""
    _, event_name, customer, value, dimensions, occurred_at, account = row
    if isinstance(dimensions, str):  # drivers that do not decode jsonb (asyncpg)
        dimensions = json.loads(dimensions)
    checks = {
        "event_name": event_name == fact.event_name,
        "customer": customer == fact.customer,
        "value": Decimal(value) == fact.value,
        "dimensions": dimensions == fact.dimensions,
        "timestamp": fact.occurred_at is None or occurred_at == fact.occurred_at,
        "stripe_account": account == fact.stripe_account,
    }
    return [name for name, same in checks.items() if not same]

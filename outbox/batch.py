"""record_usage_many: a batch of usage facts in one round trip, all or nothing.

The rules are record_usage's (outbox.validate, and the window judged by the database's clock);
what changes is that a batch is one decision (invariant 11): every fact is validated first and
every refusal is collected, so the caller learns all that is wrong at once, and the database
statement inserts nothing unless every fact passes. Nothing here raises an SQL error, so the
caller's transaction stays usable after a refused batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from outbox import validate
from outbox.connections import Query, Steps
from outbox.errors import BatchRefused, InvalidUsage, Refusal
from outbox.recorded import RecordedUsage, stored_differences
from outbox.sqlfile import load
from outbox.tracecontext import current_traceparent
from outbox.validate import UsageFact

_SQL = load("outbox", "queries.sql")

# record_usage's keyword arguments, as the keys of one fact.
FIELDS = frozenset(
    {
        "event_name",
        "customer",
        "value",
        "identifier",
        "timestamp",
        "dimensions",
        "metadata",
        "stripe_account",
    }
)


@dataclass(frozen=True, slots=True)
class Batch:
    """The validated facts; `first[i]` is the index of the first fact sharing i's identifier."""

    facts: list[UsageFact]
    first: list[int]


def validate_batch(facts: Iterable[Mapping[str, Any]]) -> Batch:
    """Every fact validated; raises BatchRefused listing every refused one."""
    checked: list[UsageFact] = []
    refusals: list[Refusal] = []
    for index, fact in enumerate(facts):
        try:
            checked.append(_one(fact))
        except InvalidUsage as exc:
            refusals.append(Refusal(index, exc.field, exc.code, str(exc)))
    if refusals:
        raise BatchRefused(refusals)
    return Batch(checked, _first_of_each(checked))


def _one(fact: Mapping[str, Any]) -> UsageFact:
    if not isinstance(fact, Mapping):
        raise InvalidUsage("fact", "invalid_type", "must be a mapping of record_usage's arguments")
    unknown = sorted(set(fact) - FIELDS)
    if unknown:
        raise InvalidUsage(unknown[0], "unknown_field", "is not an argument of record_usage")
    for name in ("event_name", "customer", "value", "identifier"):
        if name not in fact:
            raise InvalidUsage(name, "missing", "is required")
    return validate.usage_fact(
        event_name=fact["event_name"],
        customer=fact["customer"],
        value=fact["value"],
        identifier=fact["identifier"],
        timestamp=fact.get("timestamp"),
        dimensions=fact.get("dimensions"),
        metadata=fact.get("metadata"),
        stripe_account_id=fact.get("stripe_account"),
    )


def _first_of_each(facts: list[UsageFact]) -> list[int]:
    """A repeated identifier is a replay of its first fact, or a conflict with it: only the
    first occurrence goes to the database, as a second record_usage call would find it there."""
    seen: dict[str, int] = {}
    first = [seen.setdefault(fact.identifier, index) for index, fact in enumerate(facts)]
    refusals = [
        _conflict(index, fact.identifier, differences)
        for index, fact in enumerate(facts)
        if first[index] != index and (differences := _differences(fact, facts[first[index]]))
    ]
    if refusals:
        raise BatchRefused(refusals)
    return first


def _differences(fact: UsageFact, earlier: UsageFact) -> list[str]:
    checks = {
        "event_name": fact.event_name == earlier.event_name,
        "customer": fact.customer == earlier.customer,
        "value": fact.value == earlier.value,
        "dimensions": fact.dimensions == earlier.dimensions,
        "timestamp": fact.occurred_at is None or fact.occurred_at == earlier.occurred_at,
        "stripe_account": fact.stripe_account == earlier.stripe_account,
    }
    return [name for name, same in checks.items() if not same]


def _conflict(index: int, identifier: str, differences: list[str]) -> Refusal:
    return Refusal(
        index,
        "identifier",
        "identifier_conflict",
        f"identifier {identifier!r} is already recorded with different {', '.join(differences)}",
    )


def record_steps(batch: Batch, notify: bool) -> Steps[list[RecordedUsage]]:
    """One statement for the whole batch; a second (and an undo) only when a concurrent writer
    committed one of its identifiers in between."""
    unique = [
        (index, fact) for index, fact in enumerate(batch.facts) if batch.first[index] == index
    ]
    if not unique:
        return []
    rows = yield Query(_SQL["record_usage_many"], _params([fact for _, fact in unique], notify))
    refusals: list[Refusal] = []
    results: dict[int, RecordedUsage] = {}
    racing: list[tuple[int, UsageFact]] = []
    for (index, fact), row in zip(unique, rows, strict=True):
        new_id, stored_id, refusal, *stored = row[:9]
        if refusal:
            problem = validate.window_refusal(refusal)
            refusals.append(Refusal(index, problem.field, problem.code, str(problem)))
        elif new_id is not None:
            results[index] = RecordedUsage(new_id, fact.identifier, True)
        elif stored_id is None:  # committed by another transaction after our snapshot
            racing.append((index, fact))
        elif differences := stored_differences(fact, (stored_id, *stored)):
            refusals.append(_conflict(index, fact.identifier, differences))
        else:
            results[index] = RecordedUsage(stored_id, fact.identifier, False)
    if refusals:
        raise BatchRefused(refusals)
    if racing:
        yield from _settle_races(racing, results)
    return _expand(batch, results)


def _settle_races(
    racing: list[tuple[int, UsageFact]], results: dict[int, RecordedUsage]
) -> Steps[None]:
    """Facts another transaction committed while the batch ran: a replay is fine; a conflict
    (or a row deleted in between) refuses the batch, so this batch's own inserts are undone."""
    rows = yield Query(
        _SQL["recorded_usage_many"], {"identifiers": [fact.identifier for _, fact in racing]}
    )
    stored = {row[0]: row[1:] for row in rows}
    refusals: list[Refusal] = []
    for index, fact in racing:
        row = stored.get(fact.identifier)
        differences = stored_differences(fact, row) if row else ["state (row vanished)"]
        if differences:
            refusals.append(_conflict(index, fact.identifier, differences))
        elif row:
            results[index] = RecordedUsage(row[0], fact.identifier, False)
    if refusals:
        mine = [result.id for result in results.values() if result.created]
        yield Query(_SQL["forget_batch"], {"ids": mine})
        raise BatchRefused(refusals)


def _expand(batch: Batch, results: dict[int, RecordedUsage]) -> list[RecordedUsage]:
    """One result per fact given; a repeated fact gets its first occurrence's row, replayed."""
    out: list[RecordedUsage] = []
    for index, first in enumerate(batch.first):
        result = results[first]
        out.append(result if first == index else RecordedUsage(result.id, result.identifier, False))
    return out


def _params(facts: list[UsageFact], notify: bool) -> dict[str, Any]:
    return {
        "identifiers": [fact.identifier for fact in facts],
        "event_names": [fact.event_name for fact in facts],
        "customers": [fact.customer for fact in facts],
        "values": [str(fact.value) for fact in facts],
        "dimensions": [json.dumps(fact.dimensions, separators=(",", ":")) for fact in facts],
        "metadata": [fact.metadata_json for fact in facts],
        "occurred_at": [
            fact.occurred_at.isoformat() if fact.occurred_at else None for fact in facts
        ],
        "stripe_accounts": [fact.stripe_account for fact in facts],
        "notify": notify,
        "trace_context": current_traceparent(),
        **validate.WINDOW_PARAMS,
    }

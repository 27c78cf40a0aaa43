"""What recording 1,000 usage facts costs: one record_usage_many call vs single calls.

Run from the repository root:  python -m bench.batch_recording [--facts 1000] [--rounds 7]

One application transaction records N facts on a psycopg 3 sync connection, then COMMIT:

  many     outbox.record_usage_many(conn, facts): validation in Python, one statement
  single   N outbox.record_usage(conn, ...) calls: one statement (round trip) per fact
  plain    one multi-row INSERT of equivalent rows into meter_event_outbox (no validation,
           no window judged, no replay detection): the floor an outbox write can cost

Every variant writes notify=False (one wake-up is noise next to N facts), into a truncated table.
Variants are interleaved round by round in shuffled order; the table reports medians over
rounds of wall time per transaction, facts/s and the per-fact cost, and the ratio to `single`
(target: `many` at least 5x faster per fact than `single` for 1,000 facts). Benchmarks print
tables and never assert: read them on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

import outbox
from bench.common import ADMIN_URL, median, scratch_database, table

VARIANTS = ("many", "single", "plain")
TRUNCATE = "TRUNCATE meter_event_outbox, meter_event_outbox_attempts"
PLAIN_COLUMNS = "(identifier, event_name, customer, value, dimensions, metadata)"


def _facts(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_name": "api_calls",
            "customer": f"cus_{i % 50}",
            "value": 1 + i % 7,
            "identifier": f"{tag}-{i}",
            "dimensions": {"region": "eu-west-1"},
            "metadata": {"request_id": f"req-{tag}-{i}"},
        }
        for i in range(n)
    ]


def _many(conn: psycopg.Connection[Any], facts: list[dict[str, Any]]) -> None:
    outbox.record_usage_many(conn, facts, notify=False)


def _single(conn: psycopg.Connection[Any], facts: list[dict[str, Any]]) -> None:
    for fact in facts:
        outbox.record_usage(conn, **fact, notify=False)


def _plain(conn: psycopg.Connection[Any], facts: list[dict[str, Any]]) -> None:
    values = ", ".join(["(%s, %s, %s, %s, CAST(%s AS jsonb), CAST(%s AS jsonb))"] * len(facts))
    params: list[Any] = []
    for fact in facts:
        params += [
            fact["identifier"],
            fact["event_name"],
            fact["customer"],
            fact["value"],
            json.dumps(fact["dimensions"]),
            json.dumps(fact["metadata"]),
        ]
    conn.execute(f"INSERT INTO meter_event_outbox {PLAIN_COLUMNS} VALUES {values}", params)


WRITERS: dict[str, Callable[[psycopg.Connection[Any], list[dict[str, Any]]], None]] = {
    "many": _many,
    "single": _single,
    "plain": _plain,
}


def _one_transaction(
    conn: psycopg.Connection[Any], variant: str, facts: list[dict[str, Any]]
) -> float:
    conn.execute(TRUNCATE)
    conn.commit()
    start = time.perf_counter()
    WRITERS[variant](conn, facts)
    conn.commit()
    return time.perf_counter() - start


def run(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with psycopg.connect(url) as conn:
        for variant in VARIANTS:  # warm-up: prepared plans, caches
            _one_transaction(conn, variant, _facts(n, f"warm-{variant}"))
        for round_no in range(rounds):
            order = list(VARIANTS)
            random.shuffle(order)
            for variant in order:
                facts = _facts(n, f"r{round_no}-{variant}")
                seconds[variant].append(_one_transaction(conn, variant, facts))
    return seconds


def report(seconds: dict[str, list[float]], n: int) -> None:
    single = median(seconds["single"])
    rows = []
    for variant in VARIANTS:
        wall = median(seconds[variant])
        rows.append([variant, wall * 1000, n / wall, wall / n * 1e6, f"{single / wall:.1f}x"])
    table(
        f"Recording {n:,} facts in one transaction (psycopg 3 sync, medians of "
        f"{len(seconds['many'])} rounds)",
        ["variant", "ms per transaction", "facts/s", "us per fact", "speed-up vs single"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database-url", default=ADMIN_URL)
    args = parser.parse_args()
    with scratch_database(args.database_url) as url:
        report(run(url, args.facts, args.rounds), args.facts)


if __name__ == "__main__":
    main()

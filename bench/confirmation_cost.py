"""What confirming accepted rows against Stripe's hourly summaries costs.

Run from the repository root:
    python -m bench.confirmation_cost [--customers 10000] [--meters 3] [--database-url URL]

Part 1, WAL per fact. One closed hour of accepted facts (customers x meters groups, F facts per
group), then the WAL (pg_current_wal_insert_lsn) each way of storing confirmation writes, each
after a CHECKPOINT (the full-page images an hour-old page pays are part of the cost):

  groups   the relay's design: discover the groups (one insert per group), lease each series
           and record its verdict (one update per group, one lease insert and delete per
           series): the real statements of relay/db/queries.sql
  column   the alternative: a `confirmed_at` column on the outbox, one UPDATE per group
           setting it on every row of the group

The WAL is cluster-wide: run it on a cluster nobody else writes to (a private one).

Part 2, Stripe reads. The real confirmation service (relay/pipeline/confirmation.py) against the
emulator, for one closed hour of those customers x meters, each group matching Stripe's total:
the summary reads one pass makes (one per (customer, meter) series), as calls per hour of usage
and as a share of Stripe's live read limit (about 100 reads/s), and how long they take at the
default pace (OUTBOX_CONFIRM_READ_SHARE 0.2 of the default read budget, 50/s live: 10 reads/s).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import orjson
import psycopg

from bench.common import ADMIN_URL, scratch_database, table
from relay.core.config import Settings
from relay.core.meters import MeterInfo
from relay.db import queries as q
from relay.db.pool import make_pool
from relay.db.store import Store, SyncStore
from relay.emulator import Emulator, EmulatorConfig, Meter
from relay.emulator.ledger import LedgerEvent
from relay.pipeline.confirmation import Confirmation, sdk_fetch
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.read_budget import STRIPE_READ_LIMIT_LIVE, ReadBudget, default_read_rate
from relay.stripe.sender import StripeSender

METERS = ["api_calls", "tokens", "storage"]


def hour_ago() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def insert_accepted(url: str, customers: int, meters: int, per_group: int) -> int:
    """One closed hour of accepted facts, accepted two hours ago (a closed discovery window)."""
    hour = hour_ago()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
            " occurred_at, created_at, accepted_at, first_attempt_at, updated_at)"
            " SELECT 'f' || c || '-' || m || '-' || k, (%s::text[])[m], 'cus_' || c, 1,"
            " 'accepted', %s + (k || ' seconds')::interval, %s, %s, %s, %s"
            " FROM generate_series(1, %s) c, generate_series(1, %s) m,"
            " generate_series(1, %s) k",
            (METERS, hour, hour, hour, hour, hour, customers, meters, per_group),
        )
        conn.execute("VACUUM ANALYZE meter_event_outbox")
    return customers * meters * per_group


def wal_bytes(conn: psycopg.Connection[Any], work: Any) -> int:
    conn.execute("CHECKPOINT")
    before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
    work()
    after = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", before)
    row = after.fetchone()
    assert row is not None
    return int(row[0])


def groups_design(conn: psycopg.Connection[Any]) -> None:
    """Discovery, then lease + verdict per series: the relay's own statements."""
    store = SyncStore(conn)
    params: q.DiscoverParams = {
        "window_seconds": 3600,
        "margin_seconds": 60,
        "batch_size": 1_000_000,
        "settle_seconds": 0,
    }
    store.one(q.DISCOVER_GROUPS(params))
    while True:
        leased = store.all(
            q.LEASE_COMPARISONS(
                {
                    "scan": 2000,
                    "series": 100,
                    "hours": 840,
                    "relay_id": "bench",
                    "lease_seconds": 60,
                }
            )
        )
        if not leased:
            return
        for g in leased:
            verdict = [
                {
                    "hour": g.hour.isoformat(),
                    "state": "confirmed",
                    "due_in": None,
                    "events": 1,
                    "value": "1",
                    "stripe_value": "1",
                    "summary_id": "mtrusg_" + uuid4().hex[:24],
                    "counted_through": g.hour.isoformat(),
                    "zero_reads": 0,
                    "detail": None,
                }
            ]
            store.one(
                q.RECORD_COMPARISONS(
                    {
                        "account": g.account,
                        "customer": g.customer,
                        "event_name": g.event_name,
                        "token": g.token,
                        "verdicts": orjson.dumps(verdict).decode(),
                        "keep_counts": False,
                    }
                )
            )


def column_design(conn: psycopg.Connection[Any]) -> None:
    """The alternative: stamp every row of each group (one UPDATE per group, as the
    comparisons come)."""
    groups = conn.execute("SELECT DISTINCT customer, event_name FROM meter_event_outbox").fetchall()
    for customer, event_name in groups:
        conn.execute(
            "UPDATE meter_event_outbox SET confirmed_at = now()"
            " WHERE customer = %s AND event_name = %s AND state = 'accepted'"
            " AND occurred_at >= %s AND occurred_at < %s",
            (customer, event_name, hour_ago(), hour_ago() + timedelta(hours=1)),
        )


def part1(
    admin_url: str, customers: int, meters: int, per_group: list[int], designs: list[str]
) -> None:
    results = []
    for f in per_group:
        for design, work in (("groups", groups_design), ("column", column_design)):
            if design not in designs:
                continue
            with scratch_database(admin_url) as url:
                facts = insert_accepted(url, customers, meters, f)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(
                        "ALTER TABLE meter_event_outbox ADD COLUMN confirmed_at timestamptz"
                    )
                    wal = wal_bytes(conn, lambda w=work, c=conn: w(c))
            results.append([design, customers * meters, f, facts, wal, wal / facts])
    table(
        "WAL the confirmation writes (after a CHECKPOINT)",
        ["design", "groups", "facts/group", "facts", "WAL bytes", "WAL bytes/fact"],
        results,
    )


async def part2(admin_url: str, customers: int, meters: int) -> None:
    config = EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        meters=tuple(Meter(name) for name in METERS[:meters]),
    )
    with scratch_database(admin_url) as url, Emulator(config) as emulator:
        insert_accepted(url, customers, meters, 1)
        hour = hour_ago()
        with emulator.state.lock:
            for c in range(1, customers + 1):
                for m in range(1, meters + 1):
                    emulator.state.ledger.record(
                        LedgerEvent(
                            config.platform_account,
                            False,
                            METERS[m - 1],
                            f"f{c}-{m}-1",
                            f"cus_{c}",
                            1,
                            int(hour.timestamp()) + 1,
                            time.time() - 7200,
                            {},
                            meter_id=f"mtr_{METERS[m - 1]}",
                        )
                    )
        settings = Settings(
            database_url=url,
            stripe_api_key="sk_test_bench",
            stripe_api_base=emulator.base_url,
            summary_settle_seconds=0,
        )
        catalogue = MeterCatalogue(60)
        catalogue.replace(
            "",
            [
                MeterInfo("", f"mtr_{n}", n, "active", "stripe_customer_id", "value", None, "sum")
                for n in METERS[:meters]
            ],
        )
        sender = StripeSender("sk_test_bench", emulator.base_url, 10, 20)
        pool = make_pool(url)
        await pool.open(wait=True)
        budget = ReadBudget(1000.0)
        confirmation = Confirmation(
            settings, Store(pool), catalogue, sdk_fetch(sender.client, budget), 1000.0
        )
        started = time.perf_counter()
        try:
            while await confirmation.run_once():
                pass
        finally:
            await sender.close()
            await pool.close()
        elapsed = time.perf_counter() - started
        reads = emulator.requests("GET /v1/billing/meters/{id}/event_summaries")
        with psycopg.connect(url) as conn:
            states = dict(
                conn.execute(
                    "SELECT state, count(*) FROM meter_event_outbox_groups GROUP BY 1"
                ).fetchall()
            )
    pace = default_read_rate("sk_live_x") * Settings.model_fields["confirm_read_share"].default
    table(
        f"Summary reads for one closed hour of {customers:,} customers x {meters} meters",
        [
            "summary reads",
            "per hour of usage",
            "share of 100/s live",
            "at 10/s (default)",
            "groups",
            "bench wall s",
        ],
        [
            [
                reads,
                f"{reads:,}/h",
                f"{reads / 3600 / STRIPE_READ_LIMIT_LIVE:.1%}",
                f"{reads / pace / 60:.0f} min",
                str(states),
                elapsed,
            ]
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=ADMIN_URL)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--meters", type=int, default=3)
    parser.add_argument("--per-group", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--designs", nargs="+", default=["groups", "column"])
    parser.add_argument("--skip-reads", action="store_true")
    args = parser.parse_args()
    part1(args.database_url, args.customers, args.meters, args.per_group, args.designs)
    if not args.skip_reads:
        asyncio.run(part2(args.database_url, args.customers, args.meters))


if __name__ == "__main__":
    main()

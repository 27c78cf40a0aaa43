"""WAL per fact of the status tallies: what recording a fact, sending it (claim + outcome, as the
relay does, in batches) and folding the counters write, measured on an idle cluster.

    python -m bench.tally_wal --admin-url postgresql://postgres@127.0.0.1:54399/postgres
    PYTHONPATH=/path/to/other/checkout python bench/tally_wal.py --admin-url ...  # before

The cluster must be idle (a private one: the WAL position is cluster-wide). Each phase runs
twice over FACTS facts and the second run is measured (the first takes the full-page images
that follow a checkpoint). Recording: one `outbox_record_usage` per transaction. Sending:
walk, claim BATCH rows (v1 lanes, 100 customers) and write their outcomes (accepted) in one
statement, as the relay does. Nothing is asserted: read the table.
"""

import argparse
from collections.abc import Callable

import psycopg

from bench.common import scratch_database
from relay.core.rows import Outcome
from relay.db.store import FIRST_LANE, SyncStore


def wal_of(conn: psycopg.Connection, work: Callable[[], None]) -> int:
    (before,) = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone() or (None,)
    work()
    (used,) = conn.execute(
        "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (before,)
    ).fetchone() or (0,)
    return int(used)


def record(conn: psycopg.Connection, tag: str, facts: int) -> None:
    for i in range(facts):
        conn.execute(
            "SELECT outbox_record_usage('api_calls', %s, 1, %s, notify => false)",
            (f"cus_{i % 100}", f"{tag}{i}"),
        )


def send(conn: psycopg.Connection, batch: int) -> None:
    store = SyncStore(conn)
    while True:
        walked = store.walk(FIRST_LANE, batch, exclusive=True)
        claimed = store.claim(
            walked.ids, fill=0, exclusive=True, relay_id="bench", lease_seconds=30
        )
        if not claimed:
            return
        store.record_outcomes(
            [Outcome.answered(c, "accepted", http_status=200) for c in claimed], "bench"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--facts", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with scratch_database(args.admin_url) as url, psycopg.connect(url, autocommit=True) as conn:
        for run in ("warm-up", "measured"):
            recorded = wal_of(conn, lambda r=run: record(conn, r, args.facts))
            sent = wal_of(conn, lambda: send(conn, args.batch))
            folded = wal_of(conn, lambda: conn.execute("SELECT outbox_fold_counts()"))
            rows.append((run, recorded, sent, folded))
    print(f"WAL bytes per fact ({args.facts:,} facts, batches of {args.batch}, 100 customers)\n")
    print("| run | record | send (claim + outcome) | fold | total |")
    print("|---|---:|---:|---:|---:|")
    for run, recorded, sent, folded in rows:
        per = [x / args.facts for x in (recorded, sent, folded)]
        print(f"| {run} | {per[0]:.0f} | {per[1]:.0f} | {per[2]:.1f} | {sum(per):.0f} |")


if __name__ == "__main__":
    main()

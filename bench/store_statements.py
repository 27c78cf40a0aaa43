"""The hot statements alone: PostgreSQL CPU per row of the claim and of the outcome write, this
tree's relay/db/queries.sql against another revision's, alternating in the same rounds.

    python -m bench.store_statements --base fe555dc [--rows 20000] [--rounds 5]

Each round and side: a scratch database, ROWS pending rows over 1,000 customers, claimed 1,000
at a time (the v2 claim: `fill`), then every claimed row's outcome written back 1,000 at a time
(accepted, and one row in 10 with a cancel requested while in flight, so both routes of
`record_outcomes` run). The figure is the serving backend's CPU (/proc) divided by rows: the
machine's load moves it far less than wall time. Nothing is asserted: read the table.
"""

import argparse
import subprocess
from typing import Any

import psycopg

from bench.common import cpu_seconds, insert_rows, median, scratch_database, table
from outbox.sqlfile import for_psycopg
from relay.core.rows import Claimed, Outcome
from relay.db.pool import QUERIES
from relay.db.store import claim_params, lease_params, outcome_params

BATCH = 1000


def queries_at(revision: str) -> dict[str, str]:
    """The named queries of relay/db/queries.sql at a git revision."""
    text = subprocess.run(
        ["git", "show", f"{revision}:relay/db/queries.sql"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    blocks = text.split("-- name: ")[1:]
    return {b.split("\n", 1)[0].strip(): b.split("\n", 1)[1].strip() for b in blocks}


def claim(conn: psycopg.Connection, sql: dict[str, str], how: Any) -> list[Any]:
    """A revision's claim: one statement, or (since `lease`) two in one transaction."""
    params = {**claim_params([], how), **lease_params([], how)}  # a one-statement claim's too
    with conn.transaction():
        rows = conn.execute(for_psycopg(sql["claim"]), params, prepare=False).fetchall()
        if "lease" not in sql:
            return rows
        locked = [r[0] for r in rows]
        return conn.execute(for_psycopg(sql["lease"]), lease_params(locked, how)).fetchall()


def one_side(sql: dict[str, str], rows: int) -> tuple[float, float]:
    """(claim, outcome write) backend CPU in microseconds per row."""
    with scratch_database() as url, psycopg.connect(url, autocommit=True) as conn:
        insert_rows(url, rows, customers=1000)
        conn.execute("VACUUM ANALYZE meter_event_outbox")
        (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        claimed: list[Claimed] = []
        start = cpu_seconds(backend)
        while len(claimed) < rows:
            how: Any = {"fill": BATCH, "exclusive": False, "relay_id": "b", "lease_seconds": 300}
            claimed += [Claimed._make(r) for r in claim(conn, sql, how)]
        claim_cpu = cpu_seconds(backend) - start
        cancel_some = "UPDATE meter_event_outbox SET cancel_requested_at = now() WHERE id % 10 = 0"
        conn.execute(cancel_some)
        start = cpu_seconds(backend)
        for i in range(0, len(claimed), BATCH):
            outcomes = [Outcome(r, "accepted", called=True) for r in claimed[i : i + BATCH]]
            params: Any = outcome_params(outcomes, "bench")
            conn.execute(for_psycopg(sql["record_outcomes"]), params, prepare=True)
        write_cpu = cpu_seconds(backend) - start
        return claim_cpu * 1e6 / rows, write_cpu * 1e6 / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sides = {args.base: queries_at(args.base), "this tree": dict(QUERIES)}
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for i in range(args.rounds):
        for name, sql in sides.items():
            found[name].append(one_side(sql, args.rows))
            claim, write = found[name][-1]
            print(
                f"round {i + 1} {name}: claim {claim:.1f} us/row, outcome write {write:.1f} us/row"
            )
    rows = [
        [name, median([c for c, _ in r]), median([w for _, w in r])] for name, r in found.items()
    ]
    table(
        f"PostgreSQL backend CPU per row, median of {args.rounds} alternating round(s)",
        ["queries.sql", "claim us/row", "outcome write us/row"],
        rows,
    )


if __name__ == "__main__":
    main()

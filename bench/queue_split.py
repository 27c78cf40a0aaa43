"""What moving the queue out of the outbox row would buy, measured before anyone builds it.

    python -m bench.queue_split [--facts 4000] [--rounds 3]

The outcome's update of a row (pending -> accepted) is never HOT: every index on the table whose
key or predicate names a column the outcome changes (state, available_at, updated_at,
last_error_code: the queue's, the operator's and the history's partial indexes) forbids it, so
each outcome writes a new tuple and an entry in the primary key, the identifier's unique index,
the customer history and the terminal-age index. A layout where no index of the row names those
columns (the queue in a table of its own) would make the outcome HOT, at the price of a second
insert in the application's transaction. This bench prices both sides in one run.

Per round, one private PostgreSQL cluster (bench.db_cost's: nothing else writes WAL there), two
databases migrated to this tree's head:
- row: the schema as it is.
- split (a counterfactual, never shipped): the indexes naming state, available_at, updated_at
  or last_error_code dropped from meter_event_outbox; the customer history as an index on
  (customer, id) of every row; a queue table (outbox_id primary key, customer, event_name,
  available_at) with the due and lane indexes, written by the library's record_usage statement
  (one more CTE) and emptied by a DELETE beside each outcome.
Phases, on each database in turn (the order alternates by round), each after a CHECKPOINT:
1. record: FACTS facts by outbox.record_usage, one transaction each.
2. outcome: the facts leased 1,000 at a time by the relay's own `claim` and `lease` (v2: no
   walk: the split layout has no lane index on the row), then accepted by the relay's own
   `record_outcomes` (a v2-stream call's decision over 100 rows), committed; in split plus the
   queue's DELETE. Only the outcome (and the DELETE) is counted.
Figures per fact: WAL bytes (pg_current_wal_insert_lsn before and after the phase) and the
serving backend's CPU (/proc/<pid>/schedstat), and the outcomes' HOT share
(pg_stat_xact_user_tables before each commit). Medians over rounds. Nothing is asserted.

What split leaves out, so its outcome figure is a floor: the claim would read the queue table
(not measured here: the claim is measured on the row layout by bench.store_statements), and
prune, status's finished-last-hour count and the confirmation's cursor lose the terminal-age
index they read (each would need another path).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.common import table
from bench.db_cost import private_cluster
from outbox.dburl import with_database

BATCH = 1000
CUSTOMERS = 2000
# Every index that names a column the outcome changes, except the primary key and identifier.
ROW_ONLY_INDEXES = (
    "customer_history",
    "due",
    "held_by_meter",
    "lane",
    "look_by_code",
    "look_by_customer",
    "look_by_state",
    "moved_age",
    "terminal_age",
    "waiting",
)
SPLIT_DDL = """
CREATE INDEX meter_event_outbox_customer_all ON meter_event_outbox (customer, id);
CREATE TABLE meter_event_outbox_queue (
    outbox_id bigint PRIMARY KEY,
    customer text NOT NULL,
    event_name text NOT NULL,
    available_at timestamptz NOT NULL
);
CREATE INDEX meter_event_outbox_queue_due ON meter_event_outbox_queue (available_at, outbox_id);
CREATE INDEX meter_event_outbox_queue_lane
    ON meter_event_outbox_queue (customer, event_name, available_at, outbox_id);
"""
QUEUE_CTE = (
    ", queued AS (INSERT INTO meter_event_outbox_queue"
    " SELECT id, customer, event_name, available_at FROM inserted)\n"
)
LAYOUTS = ("row", "split")


def backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _lsn_bytes(conn: psycopg.Connection, before: str) -> int:
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (before,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _checkpoint(conn: psycopg.Connection) -> None:
    conn.execute("CHECKPOINT")
    conn.commit()


@contextlib.contextmanager
def _measured(conn: psycopg.Connection) -> Iterator[dict[str, Any]]:
    """WAL bytes and backend CPU (ns) of the block, which ends with a commit."""
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    pid = conn.info.backend_pid
    out: dict[str, Any] = {"cpu_ns": -backend_cpu_ns(pid)}
    yield out
    conn.commit()
    out["cpu_ns"] += backend_cpu_ns(pid)
    out["wal"] = _lsn_bytes(conn, row[0])
    conn.commit()


def make_split(conn: psycopg.Connection) -> None:
    for name in ROW_ONLY_INDEXES:
        conn.execute(f"DROP INDEX meter_event_outbox_{name}")
    conn.execute(SPLIT_DDL)
    conn.commit()


@contextlib.contextmanager
def queue_in_statement() -> Iterator[None]:
    """The library's record_usage statement, its inserted row also queued (one more CTE):
    what a queue table would cost the application's statement."""
    import outbox

    sql = outbox._SQL["record_usage"]
    returning = "RETURNING id, CASE WHEN"
    final = "SELECT (SELECT id FROM inserted), refusal FROM judged"
    assert returning in sql and final in sql, "record_usage changed: adjust the split layout"
    outbox._SQL["record_usage"] = sql.replace(
        returning, "RETURNING id, customer, event_name, available_at, CASE WHEN", 1
    ).replace(final, QUEUE_CTE + final, 1)
    try:
        yield
    finally:
        outbox._SQL["record_usage"] = sql


def record(conn: psycopg.Connection, facts: int) -> dict[str, Any]:
    import outbox

    _checkpoint(conn)
    with _measured(conn) as out:
        for i in range(facts):
            outbox.record_usage(
                conn,
                event_name="api_calls",
                customer=f"cus_{i % CUSTOMERS:06d}",
                value=1 + i % 7,
                identifier=f"fact-{i:08d}",
                dimensions={"region": "eu"},
                notify=False,
            )
            conn.commit()
    return out


def outcomes(conn: psycopg.Connection, split: bool) -> dict[str, Any]:
    from bench.store_statements import _outcomes
    from relay.db import queries as q
    from relay.db.store import SyncStore, claim_params, lease_params

    how: Any = {
        "fill": 0,
        "exclusive": False,
        "relay_id": "bench",
        "lease_seconds": 300,
        "one_walk": True,
    }
    store = SyncStore(conn)
    totals: dict[str, Any] = {"cpu_ns": 0, "wal": 0, "upd": 0, "hot": 0, "rows": 0}
    _checkpoint(conn)
    while True:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM meter_event_outbox WHERE state = 'pending' ORDER BY id LIMIT %s",
                (BATCH,),
            )
        ]
        if not ids:
            return totals
        locked = store.all(q.CLAIM(claim_params(ids, how)))
        locked_ids = [r if isinstance(r, int) else r.id for r in locked]
        leased = store.all(q.LEASE(lease_params(locked_ids, how)))
        conn.commit()
        batch = _outcomes(leased, "v2-stream")
        with _measured(conn) as out:
            store.record_outcomes(batch, "bench")
            if split:
                conn.execute(
                    "DELETE FROM meter_event_outbox_queue WHERE outbox_id = ANY(%s)",
                    ([r.id for r in leased],),
                )
            upd, hot = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                " WHERE relname = 'meter_event_outbox'"
            ).fetchone() or (0, 0)
        for key in ("cpu_ns", "wal"):
            totals[key] += out[key]
        totals["upd"] += upd
        totals["hot"] += hot
        totals["rows"] += len(batch)


def one_round(admin_url: str, facts: int, order: tuple[str, ...]) -> dict[str, dict[str, float]]:
    from relay.db import migrate

    found: dict[str, dict[str, float]] = {}
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for layout in order:
            admin.execute(f"CREATE DATABASE {layout}")
    for layout in order:
        url = with_database(admin_url, layout)
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            if layout == "split":
                make_split(conn)
            with psycopg.connect(url, autocommit=True) as vac:
                vac.execute("VACUUM")  # the migrations' dead catalog rows, pruned beforehand
            with queue_in_statement() if layout == "split" else contextlib.nullcontext():
                rec = record(conn, facts)
            conn.commit()
            with psycopg.connect(url, autocommit=True) as vac:
                vac.execute("VACUUM ANALYZE")
            out = outcomes(conn, layout == "split")
        rows = max(out["rows"], 1)
        found[layout] = {
            "record WAL": rec["wal"] / facts,
            "record us": rec["cpu_ns"] / 1e3 / facts,
            "outcome WAL": out["wal"] / rows,
            "outcome us": out["cpu_ns"] / 1e3 / rows,
            "HOT %": 100.0 * out["hot"] / max(out["upd"], 1),
        }
    return found


FIGURES = (
    ("record WAL", "record_usage WAL bytes per fact (1 tx each)"),
    ("record us", "record_usage PostgreSQL CPU us per fact"),
    ("outcome WAL", "outcome WAL bytes per row (1,000-row statements)"),
    ("outcome us", "outcome PostgreSQL CPU us per row"),
    ("HOT %", "outcome updates that were HOT, %"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for n in range(args.rounds):
        order = LAYOUTS if n % 2 == 0 else LAYOUTS[::-1]
        with private_cluster() as admin_url:
            found = one_round(admin_url, args.facts, order)
        for layout, figures in found.items():
            for key, value in figures.items():
                samples[(layout, key)].append(value)
        print(f"round {n + 1}: " + "; ".join(
            f"{layout} " + ", ".join(f"{k}={v:,.1f}" for k, v in figures.items())
            for layout, figures in found.items()), flush=True)  # fmt: skip

    def med(layout: str, key: str) -> float:
        return statistics.median(samples[(layout, key)])

    rows = [[title, med("row", key), med("split", key)] for key, title in FIGURES]
    rows.append(
        [
            "record + outcome WAL bytes per fact",
            med("row", "record WAL") + med("row", "outcome WAL"),
            med("split", "record WAL") + med("split", "outcome WAL"),
        ]
    )
    rows.append(
        [
            "record + outcome PostgreSQL CPU us per fact",
            med("row", "record us") + med("row", "outcome us"),
            med("split", "record us") + med("split", "outcome us"),
        ]
    )
    table(
        f"queue in the row (today) against a queue table (counterfactual), medians of "
        f"{args.rounds} round(s), {args.facts} facts",
        ["per fact", "row (today)", "split"],
        rows,
    )


if __name__ == "__main__":
    main()

"""Every statement behind the console's overview, /metrics and `outbox-relay status`, on a
large table: EXPLAIN ANALYZE time and access paths of each, and the total per surface.

    python -m bench.console_queries                                   # 1M pending + 1M history
    python -m bench.console_queries --pending 1000000 --history 10000000 --unfolded 10000 --plans

Builds a scratch database: HISTORY accepted rows (one a second back in time, 5,000 customers),
PENDING unsent rows over 5,000 customers (one in HELD (50) held for its meter, over 3 accounts,
3 event names and 3 codes; a third of the rest backing off after a 503 for an hour; the held
rows back off too), REJECTED rejected rows under 20 codes, and 100,000 attempts
(ten a second, ids growing with time); then folds the tallies and records UNFOLDED facts one
statement each (the deltas a reader adds up between two folds). History goes in by statements
of a million rows (generate_series). Nothing is asserted: read the table.
"""

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from bench.common import kept_database, mark_seeded, scratch_database
from bench.operator_queries import explain
from outbox.sqlfile import for_psycopg
from relay.core.meters import HELD_CODES
from relay.db.pool import QUERIES
from relay.db.store import (
    ATTEMPT_WINDOW_CAP,
    CHART_EXACT,
    CHART_SAMPLES,
    CHART_SECONDS,
    FINISHED_CAP,
    HOLD_CODES,
    LOOK_SCAN,
)

PENDING = """
INSERT INTO meter_event_outbox (stripe_account, identifier, event_name, customer, value, state,
    last_error_code, attempts, first_attempt_at)
SELECT CASE WHEN h THEN (ARRAY[NULL, 'acct_b', 'acct_c'])[k %% 3 + 1] END, 'p' || g,
       CASE WHEN h THEN (ARRAY['api_calls', 'storage_gb', 'seats'])[k / 3 %% 3 + 1]
            ELSE 'api_calls' END,
       'cus_' || (g %% 5000), 1, 'pending',
       CASE WHEN h THEN (ARRAY['meter_missing', 'meter_inactive', 'meter_checking'])[k / 9 %% 3 + 1]
            WHEN g %% 3 = 0 THEN 'http_503' END,
       (g %% 3 = 0 AND NOT h)::int, CASE WHEN g %% 3 = 0 AND NOT h THEN now() END
FROM generate_series(1, %(rows)s) g,
     -- one row in HELD held for its meter: 27 groups (3 accounts x 3 event names x 3 codes)
     LATERAL (SELECT %(held)s > 0 AND g %% greatest(%(held)s, 1) = 1,
                     g / greatest(%(held)s, 1)) x(h, k)
"""
BACKING_OFF = """
UPDATE meter_event_outbox SET available_at = now() + interval '1 hour'
WHERE state = 'pending' AND last_error_code IS NOT NULL
"""
HISTORY_CHUNK = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, created_at,
    occurred_at, updated_at, accepted_at)
SELECT 'h' || g, 'api_calls', 'cus_' || (g %% 5000), 1, 'accepted', t, t, t, t
FROM generate_series(%(offset)s + 1, %(offset)s + %(rows)s) g,
     LATERAL (SELECT now() - make_interval(secs => 20000000 - g)) s(t)
"""
REJECTED = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, last_error_code,
    last_error_message, accepted_at)
SELECT 'r' || g, 'api_calls', 'cus_' || (g %% 5000), 1, 'rejected', 'code_' || (g %% 20),
       'rejected by Stripe', now()
FROM generate_series(1, %(rows)s) g
"""
ATTEMPTS = """
INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt, key_generation,
    action, state, http_status, code)
SELECT g, now() - make_interval(secs => (100000 - g) * 0.1), 1, 0, 'report', 'accepted', 200,
       CASE WHEN g % 10 = 0 THEN 'http_503' END
FROM generate_series(1, 100000) g
"""

CODES = ["http_503", "connection_error", "meter_missing", "rate_limited"]


def look(limit: int = 50, scan: int = LOOK_SCAN, after: int = 0, **filters: Any) -> dict[str, Any]:
    """look_rows' parameters as ConsoleStore.look passes them for these filters (the rest
    "any"): `scan` rows read only when a filter no index serves is given."""
    given = {"kind": None, "code": None, "customer": None, "event_name": None, **filters}
    narrowed = given["event_name"] is not None or given["kind"] in ("retrying", "held")
    return {**given, "held": list(HOLD_CODES), "after": after, "upto": None,
            "scan": scan if narrowed else limit, "limit": limit}  # fmt: skip


# held_by_meter reads every held code in one statement (outbox_0018); before, one statement per
# code grouped every held row (held_by_meter_counted, the fallback on older schemas): both are
# shown, the old one outside the totals.
HELD: dict[str, Any] = {}
HELD_BEFORE = [{"code": c} for c in HELD_CODES]
Params = dict[str, Any] | list[dict[str, Any]]

SURFACES: dict[str, list[tuple[str, str, Params]]] = {
    "console overview": [
        ("live relays", "live_relays", {"stale_seconds": 5}),
        ("tallies: counts and buckets", "status_tally", {}),
        ("next attempt per code", "next_attempts", {"codes": CODES}),
        ("oldest unsent", "oldest_unsent", {}),
        ("finished last hour", "finished_last_hour", {"cap": FINISHED_CAP}),
        ("attempts last hour", "attempts_last_hour", {"cap": ATTEMPT_WINDOW_CAP}),
        (
            "attempt errors last hour",
            "attempt_errors_last_hour",
            {"cap": ATTEMPT_WINDOW_CAP, "limit": 10},
        ),
        ("held for their meter", "held_by_meter", HELD),
        ("failures with identifiers", "failures_with_identifiers", {"per_code": 5}),
        ("customers with most unsent", "customer_backlog", {"limit": 10}),
        ("latest drift report", "latest_drift_report", {}),
        (
            "chart: calls per minute",
            "calls_per_minute",
            {"exact": CHART_EXACT, "samples": CHART_SAMPLES, "seconds": CHART_SECONDS},
        ),
    ],
    "console list (keyset, 50 a page)": [
        ("no filter, first page", "look_rows", look()),
        ("no filter, page after id 1,500,000", "look_rows", look(after=1_500_000)),
        ("rejected, one code", "look_rows", look(kind="rejected", code="code_7")),
        (
            "rejected, one code, page after id 2,100,000",
            "look_rows",
            look(kind="rejected", code="code_7", after=2_100_000),
        ),
        ("retrying, http_503", "look_rows", look(kind="retrying", code="http_503")),
        (
            "any state, http_503, after id 1,900,000",
            "look_rows",
            look(code="http_503", after=1_900_000),
        ),
        ("held (none held: reads the whole bound)", "look_rows", look(kind="held")),
        ("one customer", "look_rows", look(customer="cus_42")),
        ("one customer, rejected", "look_rows", look(customer="cus_42", kind="rejected")),
        ("a meter no row has (reads the whole bound)", "look_rows", look(event_name="none")),
        (
            "bulk set: 1,000 rows, scan 5,000",
            "look_rows",
            look(kind="retrying", code="http_503", limit=1000, scan=5000),
        ),
    ],
    "/metrics": [
        ("state counts (status view)", "state_counts", {}),
        ("oldest unsent", "oldest_unsent", {}),
        ("live relays", "live_relays", {"stale_seconds": 5}),
        ("latest drift report", "latest_drift_report", {}),
        ("held for their meter", "held_by_meter", HELD),
    ],
    "outbox-relay status": [
        ("tallies: counts, buckets, failures", "status_tally", {}),
        ("live relays", "live_relays", {"stale_seconds": 5}),
        ("oldest unsent", "oldest_unsent", {}),
        ("next attempt per code", "next_attempts", {"codes": CODES}),
        ("held for their meter", "held_by_meter", HELD),
        ("meter reads", "meter_reads", {}),
    ],
    "before outbox_0018 (not in the totals above)": [
        ("held for their meter, every held row", "held_by_meter_counted", HELD_BEFORE),
    ],
}
# One statement per fact recorded since the last fold (the relay folds every
# OUTBOX_UPKEEP_INTERVAL, 10 s): what the readers add up besides the folded tallies.
UNFOLDED = """
SELECT outbox_record_usage('api_calls', 'cus_' || (g %% 5000), 1, 'u' || g, notify => false)
FROM generate_series(1, %(rows)s) g
"""


def seed(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    """The history in statements of a million rows (each statement appends one delta row), then
    the backlog, the rejected rows and the attempts; folded; then --unfolded single facts."""
    done = 0
    while done < args.history:
        rows = min(1_000_000, args.history - done)
        conn.execute(HISTORY_CHUNK, {"rows": rows, "offset": args.history - done - rows})
        done += rows
        print(f"history: {done:,} rows", file=sys.stderr, flush=True)
    conn.execute(PENDING, {"rows": args.pending, "held": args.held})
    conn.execute(BACKING_OFF)
    conn.execute(REJECTED, {"rows": args.rejected})
    conn.execute(ATTEMPTS)
    conn.execute("SELECT outbox_fold_counts()")
    conn.execute("VACUUM ANALYZE")
    if args.unfolded:
        conn.execute(UNFOLDED, {"rows": args.unfolded})


def explained(conn: psycopg.Connection, name: str, params: Params) -> tuple[float, str]:
    """EXPLAIN ANALYZE time and access paths of the statement, or of each of its runs."""
    runs = [explain(conn, name, p) for p in (params if isinstance(params, list) else [params])]
    paths = sorted({path for _, p in runs for path in p.split("; ") if path})
    return sum(ms for ms, _ in runs), "; ".join(paths)


@contextlib.contextmanager
def database(name: str | None) -> Iterator[tuple[str, bool]]:
    """A kept database of that name (reused if seeded), else a scratch one."""
    if name:
        with kept_database(name) as kept:
            yield kept
    else:
        with scratch_database() as url:
            yield url, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--rejected", type=int, default=200_000)
    parser.add_argument("--unfolded", type=int, default=0)
    parser.add_argument(
        "--held",
        type=int,
        default=50,
        help="1 pending row in HELD held for its meter, over 3 accounts x 3 event names x 3 "
        "codes (0: none)",
    )
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS)")
    parser.add_argument(
        "--database",
        help="keep the seeded database under this name and reuse it when it exists "
        "(the seed of 10M rows takes minutes; the sizes must match the first run's)",
    )
    args = parser.parse_args()
    with database(args.database) as (url, seeded), psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        started = time.monotonic()
        if not seeded:
            seed(conn, args)
            if args.database:
                mark_seeded(url)
        how = f"seeded in {time.monotonic() - started:.0f} s" if not seeded else "seeded earlier"
        print(
            f"{args.pending:,} pending (a third backing off after a 503, 1/{args.held} held for "
            f"their meter), {args.history:,} accepted history, {args.rejected:,} rejected, "
            f"{args.unfolded:,} facts not yet folded; {how} "
            "(median of 3 runs, EXPLAIN ANALYZE execution time)\n"
        )
        print("| surface | statement | ms | access paths |")
        print("|---|---|---:|---|")
        for surface, statements in SURFACES.items():
            total = 0.0
            for label, name, params in statements:
                runs = sorted(explained(conn, name, params) for _ in range(3))
                ms, paths = runs[1]
                total += ms
                print(f"| {surface} | {label} | {ms:.1f} | {paths} |")
            print(f"| **{surface}** | **total** | **{total:.1f}** | |")
        if args.plans:  # each statement of `status` and /metrics once, with its plan
            plans = [*SURFACES["outbox-relay status"], *SURFACES["/metrics"]]
            for name, params in {n: p for _, n, p in plans}.items():
                sql = "EXPLAIN (ANALYZE, BUFFERS) " + for_psycopg(QUERIES[name])
                for p in params if isinstance(params, list) else [params]:
                    print(f"\n-- {name} {p}")
                    print("\n".join(line for (line,) in conn.execute(sql, p)))


if __name__ == "__main__":
    main()

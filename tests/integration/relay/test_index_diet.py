"""The attention indexes are gone (migration outbox_0019): the console's "failures with their
first identifiers" reads look_by_code, which also holds pending rows with a code, and still
reads only the first entries of each code (regression while making it: the walk read the
state's entries from its first one, or sorted them all, 140-250 ms with 200,000 rejected rows)."""

import json
from typing import Any

import psycopg

from outbox.sqlfile import for_psycopg
from relay.db.pool import QUERIES

CODES = 3
PER_CODE = 40_000


def _index_blocks(plan: dict[str, Any]) -> int:
    """Blocks read by the scans of meter_event_outbox (its indexes and heap), all loops."""
    here = 0
    if plan.get("Relation Name") == "meter_event_outbox":
        here = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    return here + sum(_index_blocks(p) for p in plan.get("Plans", []))


def test_failures_with_identifiers_reads_only_each_codes_first_entries(
    db: psycopg.Connection,
) -> None:
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code)"
        " SELECT 'r' || g, 'api_calls', 'cus_' || (g %% 100), 1, 'rejected', 'code_' || (g %% %s)"
        " FROM generate_series(1, %s) g",
        (CODES, CODES * PER_CODE),
    )
    db.execute(  # pending rows with a code sort between the failed and the rejected ones
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code) SELECT 'p' || g, 'api_calls', 'cus_' || (g %% 100), 1, 'pending',"
        " 'http_503' FROM generate_series(1, %s) g",
        (PER_CODE,),
    )
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code) VALUES ('f1', 'api_calls', 'cus_1', 1, 'failed', 'zzz')"
    )
    db.execute("SELECT outbox_fold_counts()")
    db.execute("VACUUM ANALYZE meter_event_outbox")
    sql = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + for_psycopg(
        QUERIES["failures_with_identifiers"]
    )
    (plan,) = db.execute(sql, {"per_code": 5}).fetchone()
    plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    found = db.execute(
        for_psycopg(QUERIES["failures_with_identifiers"]), {"per_code": 5}
    ).fetchall()

    assert sorted((s, c, n, len(ids)) for s, c, n, ids in found) == [
        ("failed", "zzz", 1, 1),
        *[("rejected", f"code_{i}", PER_CODE, 5) for i in range(CODES)],
    ]
    # a descent and a leaf per code, and the five rows' heap pages: a few dozen blocks
    assert _index_blocks(plan["Plan"]) <= 80, json.dumps(plan, indent=1)

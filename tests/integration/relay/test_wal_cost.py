"""What a claim and an outcome write to the WAL: the claim only its row lock, no index of leased
rows an entry; the outcome's new version of a row stays on the row's page (fillfactor). Counted
from the WAL records themselves (pg_walinspect), filtered to this database's relations: never a
timing."""

import re
from collections import Counter

import psycopg
import pytest

from relay.core.rows import Outcome
from relay.db.store import SyncStore
from tests.support.relay import insert_usage

BLOCK = re.compile(r"rel \d+/(\d+)/(\d+) fork main blk (\d+)")


def _lsn(db: psycopg.Connection) -> str:
    return str(db.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0])


def _records(db: psycopg.Connection, start: str, end: str) -> Counter[tuple[str, str]]:
    """(relation, record kind) -> how many, for this database's records in the range."""
    (dboid,) = db.execute(
        "SELECT oid::text FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    names = dict(db.execute("SELECT relfilenode::text, relname FROM pg_class").fetchall())
    seen: Counter[tuple[str, str]] = Counter()
    for rmgr, kind, refs in db.execute(
        "SELECT resource_manager, record_type, block_ref FROM pg_get_wal_records_info(%s, %s)",
        (start, end),
    ):
        found = BLOCK.search(refs or "")
        if found and found.group(1) == dboid:
            seen[(names.get(found.group(2), "?"), f"{rmgr}/{kind}")] += 1
    return seen


@pytest.fixture
def walinspect(db: psycopg.Connection) -> psycopg.Connection:
    db.autocommit = True
    try:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    except psycopg.errors.FeatureNotSupported:  # a server without the contrib modules
        pytest.skip("pg_walinspect is not installed on this server")
    return db


def test_a_claim_keeps_the_new_version_on_its_page_and_writes_no_busy_entry(
    database_url: str, walinspect: psycopg.Connection
) -> None:
    db = walinspect
    insert_usage(database_url, 400, customers=400)  # pages filled as far as the table allows
    # One row per page, so each page has the room its fillfactor left, and no more.
    ids = [
        i
        for (i,) in db.execute(
            "SELECT min(id) FROM meter_event_outbox GROUP BY (ctid::text::point)[0] ORDER BY 1"
        )
    ]
    assert len(ids) > 5
    start = _lsn(db)
    claimed = SyncStore(db).claim(
        ids, fill=0, exclusive=False, relay_id="r", lease_seconds=30, one_walk=True
    )
    seen = _records(db, start, _lsn(db))

    assert len(claimed) == len(ids)
    # The claim's own row lock, once per row: a version that must move to another page logs
    # a second lock record for the old one (and the whole new tuple).
    assert seen[("meter_event_outbox", "Heap/LOCK")] == len(ids)
    assert seen[("meter_event_outbox", "Heap/UPDATE+INIT")] == 0
    assert not any(rel == "meter_event_outbox_busy" for rel, _ in seen)


def test_a_recorded_fact_takes_one_entry_in_each_index_it_needs_and_no_other(
    database_url: str, walinspect: psycopg.Connection
) -> None:
    """Regression (migration outbox_0021): a fresh fact also took an entry in the unsent-age
    index (64 bytes of WAL), though the due index already holds it in recording order."""
    import outbox

    db = walinspect
    facts = 50
    start = _lsn(db)
    with psycopg.connect(database_url) as app:
        for i in range(facts):  # the application's way: one fact, one transaction
            outbox.record_usage(
                app, event_name="api_calls", customer=f"cus_{i % 7}", value=1, identifier=f"f{i}"
            )
            app.commit()
    seen = _records(db, start, _lsn(db))

    entries = Counter({rel: n for (rel, kind), n in seen.items() if kind == "Btree/INSERT_LEAF"})
    assert entries == {
        "meter_event_outbox_pkey": facts,
        "meter_event_outbox_identifier_key": facts,
        "meter_event_outbox_lane": facts,
        "meter_event_outbox_due": facts,
    }


def _update_records(db: psycopg.Connection, start: str, end: str) -> Counter[int]:
    """The outbox's heap updates in the range by how many blocks each names: 1 = the new
    version stayed on its page (only the changed bytes logged), 2 = it moved to another."""
    (relfilenode,) = db.execute(
        "SELECT pg_relation_filenode('meter_event_outbox')::text"
    ).fetchone()
    blocks: Counter[int] = Counter()
    for refs in db.execute(
        "SELECT block_ref FROM pg_get_wal_records_info(%s, %s)"
        " WHERE resource_manager = 'Heap' AND record_type LIKE 'UPDATE%%'",
        (start, end),
    ):
        found = BLOCK.search(refs[0] or "")
        if found and found.group(2) == relfilenode:
            blocks[refs[0].count("blkref #")] += 1
    return blocks


def _record_bench_rows(db: psycopg.Connection) -> list[int]:
    """300 of bench.db_cost's rows (a dimension and a metadata key) over a few pages; their ids."""
    db.execute(
        "SELECT outbox_record_usage('api_calls', 'cus_' || g, 1 + g % 5, 'a1b2c3d4-' || g,"
        ' dimensions => \'{"region": "eu-west-1"}\','
        " metadata => jsonb_build_object('r', 'a1b2c3d4-' || g), notify => false)"
        " FROM generate_series(1, 300) g"
    )
    pages = "SELECT count(DISTINCT (ctid::text::point)[0]) FROM meter_event_outbox"
    assert db.execute(pages).fetchone()[0] > 3
    return [i for (i,) in db.execute("SELECT id FROM meter_event_outbox ORDER BY id")]


def _accept(db: psycopg.Connection, ids: list[int]) -> None:
    """Claim the rows and record each one's acceptance, carried request id and all."""
    claimed = SyncStore(db).claim(
        ids, fill=0, exclusive=False, relay_id="r", lease_seconds=30, one_walk=True
    )
    assert len(claimed) == len(ids)
    outcomes = [  # Stripe's request ids are 18 characters
        Outcome.answered(c, "accepted", request_id=f"req_{c.id:014d}", latency_ms=41.5,
                         http_status=200)
        for c in claimed
    ]  # fmt: skip
    assert len(SyncStore(db).record_outcomes(outcomes, "relay-host-4711")) == len(ids)


def test_every_outcome_version_stays_on_its_page(
    database_url: str, walinspect: psycopg.Connection
) -> None:
    """A page filled by inserts keeps room for one new version of each of its rows (outbox_0022,
    fillfactor 45; 40 since outbox_0033 made the rows narrower, when one in eight of these
    moved): the acceptance of every row, carried request id and all, stays on its page.
    At fillfactor 75 (outbox_0017) most moved, each logging its whole tuple and a lock record
    for the old one (about 160 bytes of WAL per fact, docs/benchmarks.md). The rows are
    bench.db_cost's (a dimension and a metadata key); a row much smaller than that grows by more
    than its page's room (the carried columns are a fixed hundred bytes or so) and may
    still move."""
    db = walinspect
    ids = _record_bench_rows(db)
    start = _lsn(db)
    _accept(db, ids)
    assert _update_records(db, start, _lsn(db)) == Counter({1: len(ids)})


def test_every_outcome_version_stays_on_its_page_by_ctid(db: psycopg.Connection) -> None:
    """The same property without pg_walinspect (a server without the contrib modules, such as
    CI's embedded PostgreSQL): each accepted row's new version is on the page its insert
    filled (fails at fillfactor 75)."""
    db.autocommit = True
    page = "SELECT id, (ctid::text::point)[0] FROM meter_event_outbox"
    ids = _record_bench_rows(db)
    before = dict(db.execute(page).fetchall())
    _accept(db, ids)
    after = dict(db.execute(page).fetchall())
    moved = [i for i in ids if after[i] != before[i]]
    assert not moved, f"{len(moved)} of {len(ids)} outcomes moved to another page"

"""The v2 top-up's cursor: a relay's top-up starts after the newest row its previous top-up
locked, so it does not read past the rows already leased (they stay pending in the due index);
a relay that keeps up starts a moment before now(), so it does not read the entries of every
row settled since the outbox's last VACUUM; rows left behind are still claimed at the next
restart (every TopUp.restart_seconds, an injected clock here)."""

from datetime import timedelta
from typing import Any

import psycopg

from outbox.sqlfile import for_psycopg
from relay.core.rows import Claimed
from relay.core.top_up import IDLE_SECONDS, TopUp
from relay.db.pool import QUERIES
from relay.db.store import SyncStore, claim_params
from tests.support.relay import insert_usage

FILL = 10


def top_up(db: psycopg.Connection, cursor: TopUp | None, relay_id: str = "r") -> list[Claimed]:
    """A v2 claim with no walked heads: only the top-up."""
    how: Any = {"fill": FILL, "exclusive": False, "relay_id": relay_id, "lease_seconds": 600}
    if cursor is not None:
        how["top_up"] = cursor
    return SyncStore(db).claim([], **how)


def due_scan(db: psycopg.Connection, after: Any) -> dict[str, Any]:
    """The top-up's scan of the due index in one EXPLAIN (ANALYZE) of the claim (rolled back)."""
    how: Any = {"fill": FILL, "exclusive": False}
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + for_psycopg(QUERIES["claim"])
    with db.transaction(force_rollback=True):
        (plan,) = db.execute(explain, claim_params([], how, after)).fetchone() or (None,)

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node] + [n for child in node.get("Plans", []) for n in nodes(child)]

    (scan,) = [n for n in nodes(plan[0]["Plan"]) if n.get("Index Name") == "meter_event_outbox_due"]
    return scan


def test_a_top_up_with_the_cursor_does_not_read_past_the_rows_leased_before_it(
    database_url: str, db
) -> None:
    """All rows of one INSERT share available_at: the cursor's (available_at, id) must be the
    due index's order for the scan to start after the leased ones rather than filter them."""
    insert_usage(database_url, 1000, customers=100)
    db.execute("ANALYZE meter_event_outbox")
    cursor = TopUp()
    for _ in range(30):  # 300 rows leased by this relay's top-ups
        assert len(top_up(db, cursor)) == FILL
    continued = due_scan(db, cursor.after)
    assert continued["Actual Rows"] == FILL
    assert continued.get("Rows Removed by Filter", 0) == 0  # no leased row read
    from_start = due_scan(db, None)  # what a top-up without the cursor reads
    assert from_start["Actual Rows"] == FILL
    assert from_start["Rows Removed by Filter"] == 300


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rows_left_behind_the_cursor_are_claimed_at_the_next_restart(database_url: str, db) -> None:
    """A row whose lease expired and a row committed late with an older available_at lie
    behind the cursor; the backlog never lets a top-up come back short, and both are claimed
    by the first top-up once `restart_seconds` passed (the top-up alone: the walk's lane heads,
    which could also take them, are left out)."""
    insert_usage(database_url, 200, customers=20)
    clock = Clock()
    cursor = TopUp(clock=clock)
    first = top_up(db, cursor)
    top_up(db, cursor)
    db.execute(
        "UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'"
        " WHERE outbox_id = %s",
        (first[0].id,),
    )
    insert_usage(database_url, 1, prefix="late")
    db.execute(
        "UPDATE meter_event_outbox SET available_at = now() - interval '1 hour'"
        " WHERE identifier = 'late1'"
    )
    behind = {first[0].identifier, "late1"}
    for _ in range(5):
        claimed = top_up(db, cursor)
        assert len(claimed) == FILL  # never short
        assert not behind & {r.identifier for r in claimed}  # the cursor left them behind
    clock.t += cursor.restart_seconds
    assert behind <= {r.identifier for r in top_up(db, cursor)}


def test_after_a_short_top_up_the_next_starts_recent_before_now(database_url: str, db) -> None:
    """A top-up that comes back short reached the newest due row: a row released since with
    an available_at within `recent` before now() is taken by the very next top-up; one with an
    older available_at waits for the restart."""
    insert_usage(database_url, 25)
    clock = Clock()
    cursor = TopUp(recent=timedelta(minutes=10), clock=clock)
    first = top_up(db, cursor)
    top_up(db, cursor)
    assert len(top_up(db, cursor)) == 5  # short
    released = [first[0].id, first[1].id]
    db.execute(
        "UPDATE meter_event_outbox SET available_at = now() - interval '1 hour' WHERE id = %s",
        (released[1],),
    )
    db.execute("DELETE FROM meter_event_outbox_leases WHERE outbox_id = ANY(%s)", (released,))
    assert [r.id for r in top_up(db, cursor)] == [released[0]]
    clock.t += cursor.restart_seconds
    assert [r.id for r in top_up(db, cursor)] == [released[1]]


def test_an_idle_relay_takes_a_bulk_loads_rows_at_once(database_url: str, db) -> None:
    """A relay that found nothing is idle; woken by the commit of a long transaction (rows as
    old as its start, older than `recent`), its next top-up starts from the start."""
    insert_usage(database_url, 5)
    clock = Clock()
    cursor = TopUp(recent=timedelta(minutes=10), clock=clock)
    assert len(top_up(db, cursor)) == 5  # short
    clock.t += 0.01
    assert top_up(db, cursor) == []  # nothing more: idle from now
    insert_usage(database_url, 3, prefix="bulk")
    db.execute(
        "UPDATE meter_event_outbox SET available_at = now() - interval '1 hour'"
        " WHERE identifier LIKE 'bulk%%'"
    )
    clock.t += 0.01
    assert top_up(db, cursor) == []  # looked again at once: the window (its rows are behind)
    clock.t += 2 * IDLE_SECONDS
    assert sorted(r.identifier for r in top_up(db, cursor)) == ["bulk1", "bulk2", "bulk3"]


def test_a_backlog_due_since_minus_infinity_drains_a_batch_per_claim(database_url: str, db) -> None:
    """Rows due since '-infinity' move no cursor (psycopg has no datetime for them): a top-up
    full of them is still full, and the next starts from the start again, not from the window
    (where it could never reach them), while fresh rows keep coming."""
    insert_usage(database_url, 3 * FILL, customers=3, prefix="inf")
    db.execute("UPDATE meter_event_outbox SET available_at = '-infinity'")
    cursor = TopUp(clock=Clock())  # a clock that stands still: no restart by time
    taken = []
    for i in range(4):
        insert_usage(database_url, 1, prefix=f"fresh{i}_")
        taken.append(sum(r.identifier.startswith("inf") for r in top_up(db, cursor)))
    assert taken == [FILL, FILL, FILL, 0]


def _due_index_reads(db: psycopg.Connection, claim: Any) -> int:
    """Buffers of the due index that `claim()` read (the backend's counts not yet sent to the
    statistics, before and after)."""
    read = "SELECT pg_stat_get_xact_blocks_fetched('meter_event_outbox_due'::regclass)"
    with db.transaction():
        (before,) = db.execute(read).fetchone() or (0,)
        claim()
        (after,) = db.execute(read).fetchone() or (0,)
    return int(after) - int(before)


def test_keeping_up_the_top_up_does_not_read_the_entries_settled_before(
    database_url: str, db
) -> None:
    """Every settled row's entry stays in the due index, dead, until the outbox's next VACUUM
    (a large table's is rare). A relay that keeps up comes back short every top-up; when the
    next one started from the start it read all of them (here 20,000 rows settled an hour
    ago: about 70 index pages a claim, a read that grows until that VACUUM)."""
    insert_usage(database_url, 20_000, customers=100, prefix="h")
    db.execute("UPDATE meter_event_outbox SET available_at = now() - interval '1 hour'")
    db.execute("VACUUM meter_event_outbox")  # the first versions' entries, as autovacuum would
    db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    db.prepare_threshold = 0  # as the relay's claims run: prepared, planned once
    cursor = TopUp(recent=timedelta(minutes=10), clock=Clock())
    for prefix in "ab":  # the first from the start (kills the dead entries), the second not
        insert_usage(database_url, 3, prefix=prefix)
        assert len(top_up(db, cursor)) == 3  # short
    insert_usage(database_url, 3, prefix="c")
    keeping_up = _due_index_reads(db, lambda: top_up(db, cursor))
    insert_usage(database_url, 3, prefix="d")
    from_the_start = _due_index_reads(db, lambda: top_up(db, TopUp()))
    assert from_the_start > 50, from_the_start  # the dead prefix is there
    assert keeping_up < 10, keeping_up


def test_relays_with_their_own_cursors_claim_every_row_once(database_url: str, db) -> None:
    """Each relay keeps its own cursor; the row locks and the lease table's key still decide
    who gets a row."""
    insert_usage(database_url, 95, customers=7)
    clock = Clock()
    cursors = {
        "a": TopUp(restart_seconds=3, clock=clock),
        "b": TopUp(restart_seconds=5, clock=clock),
    }
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    while True:
        clock.t += 1
        got = {relay: top_up(db, c, relay) for relay, c in cursors.items()}
        for relay, rows in got.items():
            claimed[relay] += [r.id for r in rows]
        if not any(got.values()):
            break
    ids = claimed["a"] + claimed["b"]
    assert len(ids) == len(set(ids)) == 95


def test_rows_due_since_minus_infinity_are_topped_up_and_never_due_rows_are_not(
    database_url: str, db
) -> None:
    """No CHECK keeps available_at finite (the owner, or SQL by hand, may write either
    infinity): '-infinity' is simply due, the oldest of all, and 'infinity' never is. Neither
    breaks the top-up (a difference of timestamps is undefined for them) nor the cursor (psycopg
    has no datetime for them), also when the top-up comes back short and reaches them."""
    insert_usage(database_url, 25, customers=5)
    insert_usage(database_url, 1, prefix="only", event_name="rare")
    db.execute(
        "UPDATE meter_event_outbox SET available_at = '-infinity' WHERE identifier = 'only1'"
    )
    # its event name is in use: the due index's range includes '-infinity'
    assert ("", "rare") in SyncStore(db).event_names_in_use()
    db.execute(
        "UPDATE meter_event_outbox SET available_at = CASE identifier"
        " WHEN 'u7' THEN '-infinity'::timestamptz ELSE 'infinity' END"
        " WHERE identifier IN ('u7', 'u8')"
    )
    cursor = TopUp()
    first = top_up(db, cursor)
    assert {r.identifier for r in first[:2]} == {"only1", "u7"}  # due before every other row
    taken = [r.identifier for r in first]
    while rows := top_up(db, cursor):
        taken += [r.identifier for r in rows]
    assert sorted(taken) == sorted(["only1"] + [f"u{i}" for i in range(1, 26) if i != 8])

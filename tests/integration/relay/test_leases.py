"""Leases: one short claim transaction, a compare-and-set on every outcome, a lapsed lease
re-claimed by another relay, each lane's current head claimed once."""

import asyncio
import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from outbox.sqlfile import for_psycopg
from relay.core.rows import Outcome
from relay.db import queries
from relay.db.pool import QUERIES
from relay.db.queries import Statement
from relay.db.store import FIRST_LANE, SyncStore, claim_params, lease_params, walk_params
from relay.emulator import Emulator, Faults, Latency
from tests.support.relay import (
    accepted,
    claim,
    expire_leases,
    insert_usage,
    make_settings,
    row,
    running_relay,
)


def write(conn: psycopg.Connection, outcomes: list[Outcome]) -> set[int]:
    return SyncStore(conn).record_outcomes(outcomes, "test-relay")


def test_expired_lease_is_reclaimed_and_late_outcome_is_ignored(database_url: str, db) -> None:
    insert_usage(database_url, 1)
    (first,) = claim(db, "relay-a", lease=30)
    assert claim(db, "relay-b", lease=30) == []  # leased: invisible to others
    # The lease runs out (a dead relay's lease simply expires): its deadline is in the past.
    expire_leases(db)
    (second,) = claim(db, "relay-b", lease=30)
    assert second.id == first.id and second.lease_token != first.lease_token
    # The slow relay-a comes back with a result: its compare-and-set matches nothing.
    assert write(db, [Outcome(row=first, state="failed", code="late")]) == set()
    assert write(db, [Outcome(row=second, state="accepted")]) == {first.id}
    r = row(database_url, "u1")
    assert (r["state"], r["last_error_code"], r["leased_by"]) == ("accepted", None, "relay-b")


def test_claim_is_one_short_transaction(database_url: str, db) -> None:
    """The claim commits on its own: a concurrent reader sees the lease immediately."""
    insert_usage(database_url, 1)
    with psycopg.connect(database_url, autocommit=True) as relay_conn:
        claim(relay_conn, "relay-a", lease=30)
        assert relay_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert row(database_url, "u1")["state"] == "in_flight"


async def test_no_transaction_open_during_stripe_calls(database_url: str, emulator: Emulator):
    emulator.set_faults(Faults(latency=Latency.fixed(1500)))
    insert_usage(database_url, 4, customers=4)
    settings = make_settings(database_url, emulator)
    async with running_relay(settings) as relay:
        await relay.until(lambda: _in_flight_at_stripe(emulator, 4))
        with psycopg.connect(database_url) as conn:
            open_tx = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            ).fetchone()
        assert open_tx == (0,)


async def _in_flight_at_stripe(emulator: Emulator, n: int) -> bool:
    return emulator.stats()["in_flight"] >= n


LANE_ROW = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, available_at)"
    " VALUES (%s, 'api_calls', %s, 1, now() - make_interval(mins => %s)) RETURNING id"
)


def test_claim_takes_the_current_head_of_each_lane_once(database_url: str, db) -> None:
    """A walk's choice is stale by the time it is claimed: a row committed since then may be
    the lane's head, and a wrapped second walk may name it too. Still one row per lane."""
    db.execute(LANE_ROW, ("b1", "cus_b", 1))
    db.execute(LANE_ROW, ("a1", "cus_a", 1))
    db.commit()
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 10, exclusive=True)
    assert len(walked.ids) == 2
    (b0,) = db.execute(LANE_ROW, ("b0", "cus_b", 2)).fetchone()  # older: the new head
    db.commit()
    ids = [*walked.ids, b0]  # what a second, later walk would add
    claimed = store.claim(ids, fill=0, exclusive=True, relay_id="r", lease_seconds=30)
    db.commit()
    assert sorted(r.identifier for r in claimed) == ["a1", "b0"]  # one head per lane


def test_a_walked_head_settled_since_does_not_cost_its_lane_the_pass(database_url: str, db) -> None:
    """A wrapped walk names a lane twice: its old head (settled since the walk) and the new
    one. The lane's live row is claimed, not nothing."""
    (b1,) = db.execute(LANE_ROW, ("b1", "cus_b", 2)).fetchone()
    (b2,) = db.execute(LANE_ROW, ("b2", "cus_b", 1)).fetchone()
    db.execute("UPDATE meter_event_outbox SET state = 'accepted' WHERE id = %s", (b1,))
    db.commit()
    claimed = SyncStore(db).claim([b1, b2], fill=0, exclusive=True, relay_id="r", lease_seconds=30)
    assert [r.identifier for r in claimed] == ["b2"]


def test_a_stale_claim_leaves_a_head_whose_lane_got_busy(database_url: str, db) -> None:
    """v1: relay A walks and picks u1; before A's claim runs, relay B claims u1, its call fails
    with a short retry delay, and B claims u2. A's late claim must not lease u1 (due again):
    its lane has a call in flight."""
    insert_usage(database_url, 3)  # one lane: u1, u2, u3
    store = SyncStore(db)
    walked_by_a = store.walk(FIRST_LANE, 10, exclusive=True)
    (u1,) = claim(db, "relay-b", lease=30)
    assert u1.id in walked_by_a.ids
    retry_now = Outcome(u1, "pending", counted=1, new_key=1, code="server_error", called=True)
    assert write(db, [retry_now]) == {u1.id}
    (u2,) = claim(db, "relay-b", lease=30)
    assert u2.identifier == "u2"
    late = store.claim(
        walked_by_a.ids, fill=0, exclusive=True, relay_id="relay-a", lease_seconds=30
    )
    assert late == []
    in_flight = db.execute(
        "SELECT o.identifier FROM meter_event_outbox o JOIN meter_event_outbox_leases l"
        " ON l.outbox_id = o.id WHERE l.leased_until > now()"
    )
    assert [r for (r,) in in_flight] == ["u2"]


def test_lease_token_is_required_for_in_flight(db) -> None:
    """The schema itself keeps state and lease consistent."""

    insert_usage(db.info.dsn, 1)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE meter_event_outbox SET state = 'in_flight'")
    db.execute(
        "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = %s", (uuid.uuid4(),)
    )


async def test_v2_stream_fills_calls_from_a_trickle_and_sends_each_row_early_in_its_lease(
    database_url: str, emulator: Emulator
) -> None:
    """Events trickling in one per commit (up to 100/s) against 2 calls/s: every claim used to
    become its own call of a few events, the calls queued behind the limiter and rows outlived
    their lease. Calls are now filled from the account's queue when their slot comes.

    Measured from recorded timestamps, not the test's clock: the emulator's receipt of each
    event against its row's claim (`first_attempt_at`, set by the claim that sent it)."""
    settings = make_settings(
        database_url,
        emulator,
        stripe_api_mode="v2-stream",
        rate_limit=2,
        lease_seconds=4,
        request_timeout=2,
    )
    n = 300
    async with running_relay(settings) as relay:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for i in range(n):
                await conn.execute(
                    "SELECT outbox_record_usage('api_calls', %s, 1, %s)", (f"cus_{i % 7}", f"t{i}")
                )
                await asyncio.sleep(0.01)  # the load: arrivals spread over ~3 s
        await relay.until(lambda: accepted(database_url, n), timeout=60)
    calls = emulator.requests("POST /v2/billing/meter_event_stream", 200)
    assert n / calls >= 5, f"{calls} calls for {n} events"  # a claim was a call of 1-2
    received = {e.identifier: e.received_at for e in emulator.ledger().events}
    with psycopg.connect(database_url) as conn:
        claimed_at = dict(
            conn.execute(
                "SELECT identifier, extract(epoch FROM first_attempt_at)::float8"
                " FROM meter_event_outbox"
            )
        )
    assert sorted(received) == sorted(claimed_at)  # each counted once (the ledger dedups)
    held = max(received[i] - claimed_at[i] for i in claimed_at)
    # Queued at most a third of the lease, plus the call's transit on a loaded machine.
    assert held < settings.lease_seconds / 2, f"a row waited {held:.2f} s for its call"


def heads_plan(db: psycopg.Connection, one_walk: bool) -> str:
    """The plan of the claim's `heads` step for three ids."""
    params = claim_params(
        [1, 2, 3],
        {"fill": 0, "exclusive": True, "relay_id": "r", "lease_seconds": 30, "one_walk": one_walk},
    )
    with db.transaction(force_rollback=True):
        rows = db.execute("EXPLAIN " + for_psycopg(QUERIES["claim"]), params).fetchall()
    plan = "\n".join(r[0] for r in rows)
    return plan.split("CTE heads")[1].split("CTE chosen")[0]


def test_one_walks_heads_are_not_looked_up_twice(db: psycopg.Connection) -> None:
    """The ids of one walk name each lane once: the claim locks them with one primary-key
    probe each. Only a wrapped walk's ids are first looked up and sorted to keep one per
    lane."""
    assert "on meter_event_outbox" in heads_plan(db, one_walk=False)
    assert "on meter_event_outbox" not in heads_plan(db, one_walk=True)


def lease_probes(db: psycopg.Connection, exclusive: bool) -> tuple[set[str], set[str]]:
    """The lease table's indexes the walk's and the claim's (its heads') plans probe."""
    how: Any = {"fill": 0, "exclusive": exclusive, "relay_id": "r", "lease_seconds": 30}
    found = []
    for name, params in (
        ("walk", walk_params(FIRST_LANE, 10, exclusive)),
        ("claim", claim_params([1, 2, 3], {**how, "one_walk": True})),
    ):
        with db.transaction(force_rollback=True):
            rows = db.execute("EXPLAIN " + for_psycopg(QUERIES[name]), params).fetchall()
        plan = "\n".join(r[0] for r in rows)
        if name == "claim":  # the heads' lock (the v2 top-up has its own probe)
            plan = plan.split("CTE chosen")[1].split("CTE filled")[0]
        found.append({i for i in INDEXES if f"using {i} " in plan})
    return found[0], found[1]


INDEXES = ("meter_event_outbox_leases_pkey", "meter_event_outbox_leases_lane")


def test_v1_probes_the_lane_and_v2_the_head(db: psycopg.Connection) -> None:
    """In v1 the probe of the lane's live leases also finds the head's own (a lease carries
    its row's lane), so the walk and the claim probe the head's lease only in v2."""
    assert lease_probes(db, exclusive=True) == ({INDEXES[1]}, {INDEXES[1]})
    assert lease_probes(db, exclusive=False) == ({INDEXES[0]}, {INDEXES[0]})


def test_a_claim_whose_columns_do_not_name_claimeds_fields_is_refused(database_url, db) -> None:
    """Claimed rows are built by position (the hot path's cheapest maker), so the claim's
    RETURNING list is checked against Claimed's fields: a reordered column is an error, never
    an identifier read as an event name."""
    insert_usage(database_url, 1)
    swapped = QUERIES["lease"].replace("k.identifier, k.event_name,", "k.event_name, k.identifier,")
    assert swapped != QUERIES["lease"]
    how: Any = {"fill": 1, "exclusive": False, "relay_id": "r", "lease_seconds": 30}
    locked = [r.id for r in SyncStore(db).all(queries.CLAIM(claim_params([], how)))]
    statement = Statement(
        for_psycopg(swapped), lease_params(locked, how), queries.LEASE.rows, False
    )
    with pytest.raises(TypeError, match="Claimed expects"):
        SyncStore(db).all(statement)


def test_a_leased_row_is_in_flight_for_every_reader(database_url: str, db) -> None:
    """The claim leaves the row pending (its lease is in the lease table, migration
    outbox_0020): status, its tallies, list, inspect and the state view still say in flight,
    held by the claiming relay."""
    from tests.integration.relay.test_operator_commands import cli

    insert_usage(database_url, 2, customers=2)
    (leased,) = claim(db, "relay-a", lease=30, n=1)
    db.commit()
    assert row(database_url, leased.identifier)["state"] == "in_flight"
    counts = dict(db.execute("SELECT state, n FROM meter_event_outbox_status").fetchall())
    assert (counts["pending"], counts["in_flight"]) == (1, 1)
    status = json.loads(cli(database_url, "status", "--json").stdout)
    assert (status["counts"]["pending"], status["counts"]["in_flight"]) == (1, 1)
    assert status["unsent"]["buckets"]["in_flight"]["rows"] == 1
    listed = json.loads(cli(database_url, "list", "--state", "in_flight", "--json").stdout)
    assert [r["identifier"] for r in listed] == [leased.identifier]
    pending = json.loads(cli(database_url, "list", "--state", "pending", "--json").stdout)
    assert leased.identifier not in [r["identifier"] for r in pending] and len(pending) == 1
    story = cli(database_url, "inspect", leased.identifier).stdout
    assert "in flight" in story and "relay-a" in story


def test_leases_left_behind_are_dropped_and_a_dead_relays_first_claim_is_kept(
    database_url: str, db
) -> None:
    """A lease whose row was settled while its relay died is dropped with the counter fold; an
    expired lease of a pending row stays until it is taken over, keeping its first claim (the
    dedup clock of a call that may have landed)."""
    insert_usage(database_url, 2, customers=2)
    first, second = claim(db, "relay-a", lease=30)
    (an_hour_ago,) = db.execute("SELECT now() - interval '1 hour'").fetchone() or (None,)
    db.execute(
        "UPDATE meter_event_outbox_leases SET leased_until = now() - interval '2 minutes',"
        " first_claimed_at = %s",
        (an_hour_ago,),
    )
    db.execute("UPDATE meter_event_outbox SET state = 'rejected' WHERE id = %s", (first.id,))
    db.commit()
    db.execute(QUERIES["fold_counts"])
    db.commit()
    left = [i for (i,) in db.execute("SELECT outbox_id FROM meter_event_outbox_leases")]
    assert left == [second.id]
    (taken,) = claim(db, "relay-b", lease=30)
    assert (taken.id, taken.first_attempt_at) == (second.id, an_hour_ago)


def tally_trigger_calls(db: psycopg.Connection, how: Any) -> tuple[int, list[Any]]:
    """One claim (rolled back) and how often it ran the tallies' UPDATE statement trigger."""
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL track_functions = 'pl'")
        leased = SyncStore(db).claim([], **how)
        states = db.execute(
            "SELECT state FROM meter_event_outbox WHERE id = ANY(%s) ORDER BY id",
            ([r.id for r in leased],),
        ).fetchall()
        (calls,) = db.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname = 'meter_event_outbox_tally_update_changes'"
        ).fetchone() or (0,)
    return int(calls), [s for (s,) in states]


def test_a_claim_updates_no_row_and_fires_no_update_trigger_unless_a_row_is_an_earlier_releases(
    database_url: str, db
) -> None:
    """A claim leaves the rows as they are (the lease is in the lease table): it runs no UPDATE
    of the outbox, whose statement trigger (the tallies', transition tables) fires even on no
    row. Only a row an earlier release's relay left in_flight, lease expired, is updated: it is
    pending again once leased, so that relay's late outcome loses its compare-and-set."""
    insert_usage(database_url, 5)
    how: Any = {"fill": 10, "exclusive": False, "relay_id": "r", "lease_seconds": 30}
    assert tally_trigger_calls(db, how) == (0, ["pending"] * 5)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = gen_random_uuid(),"
        " leased_by = 'relay-old', available_at = now() - interval '1 second'"
        " WHERE identifier = 'u3'"
    )
    assert tally_trigger_calls(db, how) == (1, ["pending"] * 5)


def test_relays_racing_for_the_same_heads_lease_each_row_once_and_never_fail(
    database_url: str,
) -> None:
    """The lease of a row no lease of which the claim's snapshot sees is a plain INSERT: the row
    lock the claim holds is what keeps a second relay out (every lease is inserted under its
    row's lock). Four relays walk and claim the same lanes at once, over and over, their leases
    expiring as they go (so takeovers race fresh leases too): no claim fails, and no row is
    leased by two relays at the same time."""
    insert_usage(database_url, 400, customers=40)
    errors: list[BaseException] = []
    held: dict[int, set[str]] = {}

    def relay(name: str) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                store = SyncStore(conn)
                for i in range(30):
                    walked = store.walk(FIRST_LANE, 20, exclusive=i % 2 == 0)
                    how: Any = {"relay_id": name, "lease_seconds": 0.05, "one_walk": True}
                    for r in store.claim(walked.ids, fill=20, exclusive=i % 2 == 0, **how):
                        held.setdefault(r.id, set()).add(str(r.lease_token))
        except BaseException as err:  # the test asserts none happened
            errors.append(err)

    threads = [threading.Thread(target=relay, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(held) > 20
    with psycopg.connect(database_url) as conn:
        leases = conn.execute(
            "SELECT count(*), count(DISTINCT outbox_id) FROM meter_event_outbox_leases"
        ).fetchone()
    assert leases is not None and leases[0] == leases[1]  # one lease per row at most

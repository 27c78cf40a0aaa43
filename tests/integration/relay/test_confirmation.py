"""Stripe's truth in the outbox table: accepted rows are confirmed against Stripe's hourly event
summaries, rows Stripe dropped end `rejected` (named by an error report's samples, or inferred
for their whole group), partial differences are drift and never pinned on rows, and replicas
compare each group once. Against the emulator, with error reports aggregated and sampled as
Stripe does and summaries that lag."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from relay.db import operations as ops
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator, EmulatorConfig
from relay.server.http_server import make_app
from relay.stripe.webhooks import apply_event
from tests.integration.relay.test_meters import stripe_client
from tests.support.console import listening
from tests.support.relay import RunningRelay, make_settings, running_relay, states

SECRET = "whsec_confirmation_suite"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        customers=frozenset({"cus_real", "cus_other"}),
        error_report_delay=6.0,  # one report for the whole drain, as Stripe aggregates
        summaries_lag_seconds=0.3,
        summaries_jitter_seconds=0.5,  # two reads a moment apart may disagree
    )


def record_last_hour(
    database_url: str, customer: str, n: int, prefix: str, account: str | None = None
) -> list[str]:
    """n facts of value 1 that happened in the previous (closed) UTC hour."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', %s, 1, %s || g,"
            " date_trunc('hour', now()) - interval '30 minutes', stripe_account => %s)"
            " FROM generate_series(1, %s) g",
            (customer, prefix, account, n),
        )
    return [f"{prefix}{g}" for g in range(1, n + 1)]


def rows(database_url: str, prefix: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT identifier, state, last_error_code, inferred_from FROM meter_event_outbox"
            " WHERE identifier LIKE %s ORDER BY id",
            (prefix + "%",),
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def fast(database_url: str, emulator: Emulator, **extra: Any) -> Any:
    """Settle and discovery windows in seconds instead of half an hour and an hour."""
    values: dict[str, Any] = {
        "summary_settle_seconds": 1.0,
        "confirm_window_seconds": 1.0,
        "read_rate_limit": 200.0,
        "confirm_read_share": 1.0,
        "stripe_webhook_secret": SECRET,
    }
    values.update(extra)
    return make_settings(database_url, emulator, **values)


@contextlib.asynccontextmanager
async def relay_with_webhooks(settings: Any, emulator: Emulator) -> AsyncIterator[RunningRelay]:
    async with running_relay(settings) as relay:
        app = make_app(relay.relay, relay.relay.store, stripe_client(emulator), SECRET)
        async with listening(app) as url:
            emulator.set_webhook(url + "/webhooks/stripe", SECRET)
            yield relay


async def until(relay: RunningRelay, condition: Any, timeout: float = 40.0) -> None:
    """Wait until `condition()` holds, looking again after each confirmation pass."""
    confirmation = relay.relay.confirmation
    assert confirmation is not None

    async def loop() -> None:
        while not condition():
            async with confirmation.passed:
                await confirmation.passed.wait()

    await asyncio.wait_for(loop(), timeout)


def status(database_url: str) -> dict[str, Any]:
    with ops.connect(database_url) as conn:
        return ops.status(conn)


def accepted_confirmed(database_url: str, n: int) -> bool:
    counts = status(database_url)["counts"]
    return counts.get("confirmed") == n and counts.get("awaiting_confirmation") == 0


async def test_every_dropped_row_ends_rejected_ten_named_ninety_inferred(
    database_url: str, emulator: Emulator
) -> None:
    """100 facts Stripe drops (unknown customer): the error report names 10 samples and
    counts 100; the comparison it asks for finds Stripe's total at 0 and rejects the other 90
    (inferred, with the report's id). Facts Stripe counted are confirmed, never rejected."""
    ghost = record_last_hour(database_url, "cus_ghost", 100, "ghost")
    real = record_last_hour(database_url, "cus_real", 20, "real")
    # The summaries settle after the report arrives, as Stripe's do (minutes, not seconds).
    settings = fast(database_url, emulator, summary_settle_seconds=8.0)
    async with relay_with_webhooks(settings, emulator) as relay:
        await until(relay, lambda: states(database_url).get("rejected", 0) == 100)
        await until(relay, lambda: accepted_confirmed(database_url, len(real)))
    dropped = rows(database_url, "ghost")
    assert {r["state"] for r in dropped} == {"rejected"}
    assert {r["last_error_code"] for r in dropped} == {"meter_event_customer_not_found"}
    named = [r for r in dropped if r["inferred_from"] is None]
    inferred = [r for r in dropped if r["inferred_from"] is not None]
    # One report (10 samples) when the drain fits its aggregation window; on a loaded machine
    # the drain can span two, each naming its own 10: the rest is inferred either way.
    reports = {e["id"] for e in emulator.events()}
    assert (len(named), len(inferred)) == (10 * len(reports), 100 - 10 * len(reports))
    assert {r["inferred_from"] for r in inferred} <= reports
    assert {r["state"] for r in rows(database_url, "real")} == {"accepted"}
    data = status(database_url)
    assert data["counts"]["rejected"] == len(ghost)
    assert data["counts"]["accepted"] == len(real) == data["counts"]["confirmed"]
    with ops.connect(database_url) as conn:
        story = ops.inspect(conn, inferred[0]["identifier"])
        confirmed = ops.inspect(conn, real[0])
    assert story is not None and "inferred" in story["summary"]
    assert confirmed is not None and confirmed["summary"].startswith("accepted by Stripe")
    assert "confirmed at" in confirmed["summary"], confirmed["summary"]


async def test_a_clean_run_ends_with_every_accepted_row_confirmed(
    database_url: str, emulator: Emulator
) -> None:
    identifiers = record_last_hour(database_url, "cus_real", 30, "a")
    identifiers += record_last_hour(database_url, "cus_other", 30, "b")
    async with relay_with_webhooks(fast(database_url, emulator), emulator) as relay:
        await until(relay, lambda: accepted_confirmed(database_url, 60))
        confirmation = relay.relay.confirmation
        assert confirmation is not None
        compared = confirmation.compared
    assert states(database_url) == {"accepted": 60}
    assert compared == 2  # one summary read per (customer, meter) series
    with ops.connect(database_url) as conn:
        story = ops.inspect(conn, identifiers[0])
    assert story is not None and story["confirmation"]["confirmed"] is True
    assert story["confirmation"]["summary_id"].startswith("mtrusg_")


async def test_a_partial_drop_is_drift_and_never_pinned_on_rows(
    database_url: str, emulator: Emulator
) -> None:
    """Stripe counted 15 of a group's 20 facts (5 were taken back behind the relay's back):
    the group is reported as drift with its identifiers; no row is rejected."""
    record_last_hour(database_url, "cus_real", 20, "p")
    settings = fast(database_url, emulator)
    async with relay_with_webhooks(settings, emulator) as relay:
        await until(relay, lambda: states(database_url).get("accepted", 0) == 20)
        client = stripe_client(emulator)
        for identifier in ["p16", "p17", "p18", "p19", "p20"]:
            await client.v1.billing.meter_event_adjustments.create_async(
                {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": identifier}}
            )
        await until(relay, lambda: status(database_url)["confirmation"]["drifting"] == 20)
    assert states(database_url) == {"accepted": 20}
    with psycopg.connect(database_url) as conn:
        report = conn.execute(
            "SELECT differing, drift_events, differences FROM meter_event_outbox_drift_reports"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert report is not None
    differing, drift_events, differences = report
    assert (differing, drift_events) == (1, 5)
    assert differences[0]["identifiers"][:2] == ["p1", "p2"]


async def test_a_cross_account_error_report_touches_nothing(
    database_url: str, emulator: Emulator
) -> None:
    """A connected account's report that counts unlisted failures and names our platform
    rows' identifiers neither rejects nor schedules anything for them."""
    record_last_hour(database_url, "cus_real", 5, "x")
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
        # The platform's meters were read: none has the event name, so a no_meter_found
        # report of the platform's own would reject its rows.
        conn.execute(
            "INSERT INTO meter_event_outbox_meter_reads (stripe_account, outcome)"
            " VALUES ('', 'ok'), ('acct_attacker', 'ok')"
        )
    event = {
        "id": "evt_attacker",
        "type": "v1.billing.meter.no_meter_found",
        "context": "acct_attacker",
        "data": {
            "validation_start": "2000-01-01T00:00:00Z",
            "validation_end": "2100-01-01T00:00:00Z",
            "reason": {
                "error_count": 500,
                "error_types": [
                    {
                        "code": "meter_event_no_meter_found",
                        "error_count": 500,
                        "sample_errors": [{"request": {"identifier": "x1"}}],
                    }
                ],
            },
        },
    }
    triggered = {**event, "id": "evt_attacker2", "type": "v1.billing.meter.error_report_triggered"}
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        assert await apply_event(Store(pool), event, settle_seconds=0) == []
        assert await apply_event(Store(pool), triggered, settle_seconds=0) == []
    finally:
        await pool.close()
    assert states(database_url) == {"accepted": 5}
    with psycopg.connect(database_url) as conn:
        scheduled = conn.execute("SELECT count(*) FROM meter_event_outbox_groups").fetchone()
    assert scheduled == (0,)
    # The same report from the rows' own account (the platform: no context) does act.
    own = {k: v for k, v in event.items() if k != "context"}
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        assert sorted(await apply_event(Store(pool), own, settle_seconds=0)) == [
            "x1", "x2", "x3", "x4", "x5"
        ]  # fmt: skip
    finally:
        await pool.close()


async def test_replicas_make_one_comparison_per_group(
    database_url: str, emulator: Emulator
) -> None:
    """Three relays on one database: each (customer, meter) series is read from Stripe once."""
    customers = [f"cus_{i}" for i in range(12)]
    for customer in customers:
        emulator.add_customer(customer)
    for i, customer in enumerate(customers):
        record_last_hour(database_url, customer, 3, f"r{i}-")
    settings = [
        fast(database_url, emulator, relay_id=f"replica-{i}", confirm_read_share=0.05)
        for i in range(3)
    ]
    async with contextlib.AsyncExitStack() as stack:
        relays = [await stack.enter_async_context(running_relay(s)) for s in settings]
        await until(relays[0], lambda: accepted_confirmed(database_url, 36))
        compared = [r.relay.confirmation.compared for r in relays if r.relay.confirmation]
    summary_calls = emulator.requests("GET /v1/billing/meters/{id}/event_summaries")
    assert sum(compared) == len(customers) == summary_calls


def test_prune_takes_the_settled_groups_of_the_rows_it_deletes(database_url: str, db: Any) -> None:
    """Groups do not outlive their rows: a confirmed group goes with its pruned rows; a group
    still awaiting stays for the operator to see."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " occurred_at, created_at, updated_at)"
        " SELECT 'old' || g, 'api_calls', 'cus_' || g, 1, 'accepted',"
        " timestamptz '2026-10-01 10:30+00', timestamptz '2026-10-01 10:30+00',"
        " timestamptz '2026-10-01 11:00+00' FROM generate_series(1, 2) g"
    )
    db.execute(
        "INSERT INTO meter_event_outbox_groups (stripe_account, customer, event_name, hour,"
        " state, due_at) VALUES ('', 'cus_1', 'api_calls', '2026-10-01 10:00+00', 'confirmed',"
        " now()), ('', 'cus_2', 'api_calls', '2026-10-01 10:00+00', 'awaiting', now())"
    )
    with ops.connect(database_url) as conn:
        assert ops.prune(conn, older_than_days=35) == 2
    left = db.execute("SELECT customer, state FROM meter_event_outbox_groups").fetchall()
    assert left == [("cus_2", "awaiting")]


async def test_summaries_failing_judge_nothing_and_cause_no_call_storm(
    database_url: str, emulator: Emulator
) -> None:
    """Stripe's summaries answer 503, then 429: nothing is judged on a failed read (no row
    moves), each series is read again only after the settle delay, and once the reads answer,
    the dropped facts end rejected (dropped_by_stripe: no error report here) and the counted
    ones confirmed."""
    record_last_hour(database_url, "cus_real", 5, "ok")
    record_last_hour(database_url, "cus_ghost", 5, "lost")
    path = "/v1/billing/meters/mtr_api_calls/event_summaries"
    emulator.fail_next(4, status=503, path=path)
    emulator.fail_next(4, kind="429", path=path)
    settings = fast(database_url, emulator, stripe_webhook_secret=None)
    async with running_relay(settings) as relay:
        await until(relay, lambda: states(database_url).get("rejected", 0) == 5)
        await until(relay, lambda: accepted_confirmed(database_url, 5))
    assert {r["last_error_code"] for r in rows(database_url, "lost")} == {"dropped_by_stripe"}
    assert {r["inferred_from"] for r in rows(database_url, "lost")} == {"summaries"}
    # 2 series: 8 failed reads, then 1 read for cus_real and 2 (zero twice) for cus_ghost.
    assert emulator.requests(path) <= 8 + 3 + 2


async def test_a_zero_total_never_rejects_zero_valued_facts_of_a_sum_meter(
    database_url: str, emulator: Emulator
) -> None:
    """A sum meter's total of 0 proves only that no fact with a value above 0 was counted: a
    fact of value 0 adds nothing either way, so Stripe may well have counted it. The group's
    facts of value 1 (taken back behind the relay's back) end rejected, inferred; the fact of
    value 0 stays accepted and is confirmed with the group."""
    dropped = record_last_hour(database_url, "cus_real", 3, "v")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', 'cus_real', 0, 'zero',"
            " date_trunc('hour', now()) - interval '30 minutes')"
        )
    async with relay_with_webhooks(fast(database_url, emulator), emulator) as relay:
        await until(relay, lambda: states(database_url).get("accepted", 0) == 4)
        client = stripe_client(emulator)
        for identifier in dropped:
            await client.v1.billing.meter_event_adjustments.create_async(
                {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": identifier}}
            )
        await until(relay, lambda: states(database_url).get("rejected", 0) == 3)
        await until(relay, lambda: accepted_confirmed(database_url, 1))
    assert {r["state"] for r in rows(database_url, "v")} == {"rejected"}
    assert [r["state"] for r in rows(database_url, "zero")] == ["accepted"]


async def test_a_no_meter_report_rejects_only_rows_of_its_own_window(
    database_url: str, emulator: Emulator
) -> None:
    """The meter was deactivated at half past: rows accepted at five past were counted, rows
    accepted after half past were not. A no_meter_found report of 30-35 past (counting more
    than it names) rejects the later rows only: its window is not widened to the whole hour,
    which would flip rows Stripe counted."""
    record_last_hour(database_url, "cus_real", 3, "early")
    record_last_hour(database_url, "cus_real", 3, "late")
    hour = "date_trunc('hour', now()) - interval '1 hour'"
    with psycopg.connect(database_url) as conn:
        for prefix, minutes in (("early", 5), ("late", 32)):
            conn.execute(
                f"UPDATE meter_event_outbox SET state = 'accepted',"
                f" accepted_at = {hour} + interval '{minutes} minutes',"
                f" updated_at = {hour} + interval '{minutes} minutes'"
                f" WHERE identifier LIKE '{prefix}%'"
            )
        conn.execute(
            "INSERT INTO meter_event_outbox_meter_reads (stripe_account, outcome) VALUES ('', 'ok')"
        )
        start, end = conn.execute(
            f"SELECT {hour} + interval '30 minutes', {hour} + interval '35 minutes'"
        ).fetchone() or (None, None)
    assert start is not None and end is not None
    event = {
        "id": "evt_no_meter",
        "type": "v1.billing.meter.no_meter_found",
        "data": {
            "validation_start": start.isoformat(),
            "validation_end": end.isoformat(),
            "reason": {
                "error_count": 3,
                "error_types": [
                    {
                        "code": "meter_event_no_meter_found",
                        "error_count": 3,
                        "sample_errors": [{"request": {"identifier": "late1"}}],
                    }
                ],
            },
        },
    }
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        await apply_event(Store(pool), event, settle_seconds=0)
    finally:
        await pool.close()
    assert {r["state"] for r in rows(database_url, "late")} == {"rejected"}
    assert {r["state"] for r in rows(database_url, "early")} == {"accepted"}

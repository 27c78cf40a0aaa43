"""The chaos run's verdict and schedule (bench/chaos_*.py): pure rules, no database."""

from bench.chaos_plan import make_plan
from bench.chaos_verdict import OutboxRow, judge


def row(identifier: str, state: str = "accepted", cancelled: bool = False) -> OutboxRow:
    action = "cancel" if cancelled else "report"
    return OutboxRow(identifier, state, action, cancelled, None)


def event(identifier: str, status: str = "accepted", cancelled: bool = False) -> dict:
    return {"identifier": identifier, "status": status, "cancelled": cancelled}


def test_each_kind_of_damage_is_reported() -> None:
    rows = [
        row("ok"),
        row("lost"),
        row("twice"),
        row("cancel-ok", "cancelled", cancelled=True),
        row("cancel-counted", "failed", cancelled=True),
        row("stuck", "pending"),
    ]
    ledger = {
        "events": [
            event("ok"),
            event("twice"),
            event("twice"),
            event("cancel-ok", cancelled=True),
            event("cancel-counted"),
            event("stuck"),
            event("rolled-back"),
        ],
        "rejected": [],
    }

    verdict = judge(rows, ledger, acked=["ok", "lost", "vanished"])

    assert verdict.committed == 6
    assert verdict.lost == ["lost", "vanished"]
    assert verdict.acked_missing == ["vanished"]
    assert verdict.twice == ["twice"]
    assert (verdict.cancelled, verdict.cancelled_ok) == (2, 1)
    assert verdict.cancelled_counted == ["cancel-counted"]
    assert verdict.failed == ["cancel-counted"]
    assert verdict.not_drained == ["stuck"]
    assert verdict.phantom == ["rolled-back"]
    assert verdict.counted == 5  # identifiers counted now: ok, twice, cancel-counted, stuck, rb
    assert not verdict.ok


def test_a_clean_run_is_ok_and_rejected_events_never_count() -> None:
    rows = [row("a"), row("b", "cancelled", cancelled=True)]
    ledger = {"events": [event("a")], "rejected": [event("b", status="rejected")]}

    verdict = judge(rows, ledger, acked=["a", "b"])

    assert verdict.ok
    assert (verdict.counted, verdict.cancelled_ok) == (1, 1)


def test_plan_puts_the_outage_mid_writing_and_every_kill_is_restarted() -> None:
    plan = make_plan(facts=100_000, rate=500, outage_s=330, kills=12, slow_s=10, seed=7)

    assert plan.outage_at == plan.writing_s / 2
    assert plan.kills == 12
    assert [e.at for e in plan.events] == sorted(e.at for e in plan.events)
    for e in plan.events:
        if e.kind == "kill":
            assert [kind for _, kind in e.then] == ["revive"]
    outage = next(e for e in plan.events if e.kind == "outage")
    assert {kind for _, kind in outage.then} == {"pg_restart", "slow"}
    assert all(delay > plan.outage_s for delay, _ in outage.then)
    crash = next(e for e in plan.events if e.kind == "pg_crash")
    assert crash.at < plan.outage_at and [k for _, k in crash.then] == ["pg_start"]


def test_plan_is_deterministic_for_a_seed() -> None:
    first = make_plan(facts=5000, rate=100, outage_s=20, kills=10, slow_s=8, seed=3)
    again = make_plan(facts=5000, rate=100, outage_s=20, kills=10, slow_s=8, seed=3)
    other = make_plan(facts=5000, rate=100, outage_s=20, kills=10, slow_s=8, seed=4)

    assert first == again
    assert first != other

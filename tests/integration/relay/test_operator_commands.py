"""Operator commands as an on-call engineer runs them (real processes, real PostgreSQL, the
emulator): true lag during an outage, list, inspect, retry and prune refusals, downgrade."""

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pytest
import stripe
from click.testing import CliRunner

from outbox.sqlfile import for_psycopg
from relay.cli.commands import main
from relay.cli.options import SECRETS, env_name
from relay.core.config import Settings
from relay.db.pool import QUERIES
from relay.db.store import SyncStore
from relay.emulator import Emulator
from tests.helpers import scalar
from tests.support.relay import (
    TEST_KEY,
    accepted,
    code_is,
    insert_usage,
    row,
    running_relay,
    states,
)

CLI = [sys.executable, "-m", "relay.cli"]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(database_url: str, *args: str, **env: str) -> Ran:
    """Run `outbox-relay ARGS` in-process with no terminal on stdin (as cron or CI would)."""
    result = CliRunner().invoke(main, list(args), env={"OUTBOX_DATABASE_URL": database_url, **env})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def fail(db: psycopg.Connection, identifier: str, code: str = "boom") -> None:
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', attempts = 1, last_error_code = %s,"
        " first_attempt_at = now() WHERE identifier = %s",
        (code, identifier),
    )


async def test_status_during_an_outage_shows_true_lag_and_what_rows_wait_for(
    database_url, emulator: Emulator, settings, db
):
    """Regression: lag was measured from available_at (0.0 s for rows in backoff)."""
    emulator.start_outage(3600, "503")
    insert_usage(database_url, 3, customers=3)
    async with running_relay(settings) as relay:
        for identifier in ("u1", "u2", "u3"):
            await relay.until(lambda i=identifier: code_is(database_url, i, "http_503"))
    db.execute("UPDATE meter_event_outbox SET available_at = now() + interval '38 seconds'")
    recorded_age = scalar(
        db, "SELECT extract(epoch FROM now() - min(created_at)) FROM meter_event_outbox"
    )

    out = cli(database_url, "status", "--json", "--fail-if-lag", "0")
    data = json.loads(out.stdout)
    assert out.returncode == 4 and "lag" in out.stderr
    assert data["lag"]["created_age_seconds"] >= float(recorded_age) > 0
    oldest = scalar(db, "SELECT min(created_at) FROM meter_event_outbox")
    assert datetime.fromisoformat(data["lag"]["oldest_unsent_created_at"]) == oldest
    buckets = data["unsent"]["buckets"]
    assert buckets["due"]["rows"] == 0 and buckets["in_flight"]["rows"] == 0
    (backoff,) = buckets["retrying_no_answer"]["groups"]
    assert (backoff["code"], backoff["rows"]) == ("http_503", 3)
    assert 0 < backoff["next_attempt_in_seconds"] <= 38
    assert cli(database_url, "status", "--fail-if-lag", "3600").returncode == 0

    human = cli(database_url, "status").stdout
    assert "oldest unsent fact recorded" in human and "http_503" in human
    summary = json.loads(cli(database_url, "inspect", "u1", "--json").stdout)["summary"]
    assert summary.startswith("retrying: attempt") and "last 503" in summary


def test_status_tells_rows_waiting_on_auth_and_fails_on_failed_rows(database_url, db):
    insert_usage(database_url, 3, customers=3)
    (outbox_id,) = db.execute(
        "UPDATE meter_event_outbox SET last_error_code = 'api_key_expired', attempts = 0"
        " WHERE identifier = 'u1' RETURNING id"
    ).fetchone()
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action,"
        " state, http_status, code) VALUES (%s, 0, 0, 'report', 'pending', 401,"
        " 'api_key_expired')",
        (outbox_id,),
    )
    fail(db, "u2")
    out = cli(database_url, "status", "--json", "--fail-if-failed", "1")
    data = json.loads(out.stdout)
    assert out.returncode == 5
    buckets = data["unsent"]["buckets"]
    assert [g["code"] for g in buckets["held_auth"]["groups"]] == ["api_key_expired"]
    assert buckets["due"]["rows"] == 1  # u3
    assert cli(database_url, "status", "--fail-if-failed", "2").returncode == 0


def test_list_filters_rows_and_exits_3_when_nothing_matches(database_url, db):
    insert_usage(database_url, 4, customers=2)
    fail(db, "u1")
    fail(db, "u3", code="other")
    out = cli(database_url, "list", "--state", "failed", "--code", "boom", "--json")
    (found,) = json.loads(out.stdout)
    assert out.returncode == 0 and found["identifier"] == "u1"
    datetime.fromisoformat(found["created_at"])  # ISO-8601
    customer = json.loads(cli(database_url, "list", "--customer", "cus_11", "--json").stdout)
    assert {r["identifier"] for r in customer} == {"u1", "u3"}
    since = cli(database_url, "list", "--since", "2000-01-01", "--limit", "2", "--json")
    assert [r["identifier"] for r in json.loads(since.stdout)] == ["u4", "u3"]
    assert cli(database_url, "list", "--event-name", "nothing").returncode == 3


def test_list_of_one_customer_merges_live_and_settled_rows_newest_first(database_url, db):
    """Live rows and settled rows are read apart (lane index, customer history index) and
    merged: newest first across both, and the limit applies to the merge."""
    insert_usage(database_url, 8, customers=2)  # cus_11: u1, u3, u5, u7
    db.execute("UPDATE meter_event_outbox SET state = 'accepted' WHERE identifier IN ('u1', 'u5')")
    db.commit()
    rows = SyncStore(db).list_rows(customer="cus_11", limit=3)
    assert [(r["identifier"], r["state"]) for r in rows] == [
        ("u7", "pending"),
        ("u5", "accepted"),
        ("u3", "pending"),
    ]
    assert [r["identifier"] for r in SyncStore(db).list_rows(state="accepted")] == ["u5", "u1"]
    assert "id" not in rows[0]  # the merge key is not part of what `list` prints
    db.execute("SET enable_seqscan = off")  # a tiny table: ask which indexes serve the list
    query = for_psycopg(QUERIES["list_rows"])
    params = {"state": None, "code": None, "customer": "cus_11", "event_name": None}
    explain = db.execute("EXPLAIN " + query, {**params, "since": None, "limit": 100})
    plan = "\n".join(line for (line,) in explain)
    assert "meter_event_outbox_customer_history" in plan and "meter_event_outbox_lane" in plan


async def test_inspect_tells_the_story_of_a_row(database_url, emulator: Emulator, settings, db):
    emulator.fail_next(1, status=503)
    insert_usage(database_url, 2, customers=2)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 2))
    data = json.loads(cli(database_url, "inspect", "u1", "--json").stdout)
    statuses = [a["http_status"] for a in data["history"]]
    assert statuses in ([503, 200], [200])  # whichever row met the 503
    assert data["summary"].startswith("accepted by Stripe at ")
    assert data["stripe_request_id"] in data["summary"]
    assert "awaiting confirmation against Stripe's hourly totals" in data["summary"]
    datetime.fromisoformat(data["accepted_at"])
    datetime.fromisoformat(data["history"][-1]["attempted_at"])
    both = [json.loads(cli(database_url, "inspect", i, "--json").stdout) for i in ("u1", "u2")]
    assert sorted(len(d["history"]) for d in both) == [1, 2]
    human = cli(database_url, "inspect", "u1").stdout
    assert "attempts (" in human and "accepted by Stripe" in human

    db.execute("UPDATE meter_event_outbox SET state = 'rejected', last_error_code = 'no_meter'")
    rejected = json.loads(cli(database_url, "inspect", "u1", "--json").stdout)
    assert "accepted_at" not in rejected and rejected["accepted_for_processing_at"]
    assert rejected["summary"].startswith("rejected by Stripe (no_meter): not billed")

    unknown = cli(database_url, "inspect", "pruned-long-ago")
    assert unknown.returncode == 1 and "never recorded, or pruned" in unknown.stderr


def test_retry_says_why_it_cannot(database_url, db):
    insert_usage(database_url, 3, customers=3)
    db.execute("UPDATE meter_event_outbox SET state = 'accepted' WHERE identifier = 'u3'")
    fail(db, "u1")
    unknown = cli(database_url, "retry", "does-not-exist")
    assert unknown.returncode == 1 and "no usage recorded" in unknown.stderr
    not_failed = cli(database_url, "retry", "u3")
    assert not_failed.returncode == 1 and "u3 is accepted" in not_failed.stderr
    both = cli(database_url, "retry", "u1", "--all")
    assert both.returncode == 2 and "not both" in both.stderr
    assert cli(database_url, "retry", "--code", "no-such-code").returncode == 1

    dry = cli(database_url, "retry", "--all", "--dry-run", "--json")
    assert json.loads(dry.stdout)["requeued"] == ["u1"] and dry.returncode == 0
    assert row(database_url, "u1")["state"] == "failed"  # nothing changed
    done = json.loads(cli(database_url, "retry", "u1", "--json").stdout)
    assert done["requeued"] == ["u1"] and row(database_url, "u1")["state"] == "pending"


def test_retry_is_one_statement_that_returns_what_it_refused_and_why(database_url, db):
    """What a retry requeues and what it refuses come from one statement (one snapshot), each
    refusal with its reason; a dry run answers the same and changes nothing."""
    insert_usage(database_url, 4, customers=4)
    fail(db, "u1")
    fail(db, "u2")
    db.execute(
        "UPDATE meter_event_outbox SET first_attempt_at = now() - interval '21 hours'"
        " WHERE identifier = 'u2'"
    )
    fail(db, "u3", code="no_meter")
    db.execute("UPDATE meter_event_outbox SET state = 'rejected' WHERE identifier = 'u3'")
    store = SyncStore(db)
    matched = [
        ("u1", False, None),
        ("u2", True, "outside_dedup_window"),
        ("u3", True, "rejected"),
    ]

    dry = store.retry(identifier=None, code=None, force=False, window_hours=20, dry_run=True)
    assert [(c.identifier, c.refused, c.reason) for c in dry] == matched
    assert states(database_url) == {"failed": 2, "rejected": 1, "pending": 1}

    done = json.loads(cli(database_url, "retry", "--all", "--include-rejected", "--json").stdout)
    assert done["requeued"] == ["u1"]
    assert [(r["identifier"], r["reason"]) for r in done["refused"]] == [
        ("u2", "outside_dedup_window"),
        ("u3", "rejected"),
    ]
    assert states(database_url) == {"failed": 1, "rejected": 1, "pending": 2}

    forced = store.retry(identifier="u3", code=None, force=True, window_hours=20)
    assert [(c.identifier, c.refused, c.reason) for c in forced] == [("u3", False, None)]
    assert row(database_url, "u3")["state"] == "pending"


def test_prune_validates_and_refuses_inside_stripes_windows(database_url, db):
    """Regression: bounds are checked before any delete (invariant 9): --batch-size 0 looped
    forever; --older-than-days -1 deleted rows accepted minutes earlier."""
    insert_usage(database_url, 3, customers=3)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', updated_at = now() - interval '2 hours'"
    )
    db.execute(
        "UPDATE meter_event_outbox SET updated_at = now() - interval '40 days'"
        " WHERE identifier = 'u1'"
    )
    assert cli(database_url, "prune", "--batch-size", "0", "--yes").returncode == 2
    assert cli(database_url, "prune", "--older-than-days", "-1", "--yes").returncode == 2
    assert cli(database_url, "prune", "--older-than-days", "0", "--yes").returncode == 2
    inside = cli(database_url, "prune", "--older-than-days", "0.01", "--yes")
    assert inside.returncode == 2 and "24 h" in inside.stderr
    no_terminal = cli(database_url, "prune", "--older-than-days", "35")
    assert no_terminal.returncode == 2 and "--yes" in no_terminal.stderr
    dry = json.loads(
        cli(database_url, "prune", "--dry-run", "--json", "--older-than-days", "35").stdout
    )
    assert dry["n"] == 1 and states(database_url) == {"accepted": 3}

    assert json.loads(cli(database_url, "prune", "--yes", "--json").stdout)["deleted"] == 1
    forced = cli(database_url, "prune", "--older-than-days", "0.01", "--force", "--yes")
    assert forced.returncode == 0 and "deleted 2" in forced.stdout
    assert states(database_url) == {}


def test_downgrade_to_base_refuses_while_rows_are_unsent(database_url):
    insert_usage(database_url, 1)
    out = cli(database_url, "migrate", "--downgrade", "--revision", "base", "--yes")
    assert out.returncode == 1 and "1 row(s) not yet reported" in out.stderr
    assert states(database_url) == {"pending": 1}


def test_downgrade_asks_first_and_without_a_terminal_needs_yes(database_url, db):
    """A downgrade drops tables with their data: with no terminal to ask, refused unless --yes."""
    head = scalar(db, "SELECT version_num FROM outbox_alembic_version")
    refused = cli(database_url, "migrate", "--downgrade", "--revision", "outbox_0004")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert scalar(db, "SELECT version_num FROM outbox_alembic_version") == head
    done = cli(database_url, "migrate", "--downgrade", "--revision", "outbox_0004", "--yes")
    assert done.returncode == 0 and "schema at outbox_0004" in done.stdout


def test_every_setting_has_a_flag_naming_its_environment_variable():
    out = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(out.stdout.split())
    for name, info in Settings.model_fields.items():
        variable = env_name(name, info)
        assert variable in text, variable
        if name not in SECRETS:
            assert f"env {variable}" in text
    assert "--mode [v1|v2-stream] v1: one call per event" in text


@pytest.mark.parametrize(
    "command",
    ["status", "list", "inspect", "retry", "cancel", "prune", "recover", "reconcile", "drift"],
)
def test_every_operator_command_has_json(command: str):
    out = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=60)
    assert "--json" in out.stdout


def test_readme_emulator_port_is_the_default():
    from pathlib import Path

    from relay.emulator.command import DEFAULT_PORT

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert f"--port {DEFAULT_PORT}" in readme and "12111" not in readme


def stripe_env(emulator: Emulator) -> dict[str, str]:
    return {"STRIPE_API_KEY": TEST_KEY, "OUTBOX_STRIPE_API_BASE": emulator.base_url}


async def test_drift_finds_a_change_made_behind_the_relays_back(
    database_url, emulator: Emulator, settings, db
):
    insert_usage(database_url, 6, customers=2)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 6))
    clean = cli(database_url, "drift", "--json", **stripe_env(emulator))
    report = json.loads(clean.stdout)
    assert clean.returncode == 0, clean.stderr
    assert (report["groups"], report["differing"]) == (2, 0)

    # An application writes to Stripe directly, for a customer the outbox also reports.
    stripe_client = stripe.StripeClient(TEST_KEY, base_addresses={"api": emulator.base_url})
    stripe_client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_11", "value": "5"}}
    )
    drifted = cli(database_url, "drift", "--json", **stripe_env(emulator))
    report = json.loads(drifted.stdout)
    assert drifted.returncode == 3
    (difference,) = report["differences"]
    assert (difference["customer"], difference["ours"], difference["stripe"]) == ("cus_11", 3, 8)
    assert difference["difference"] == 5 and difference["meter"] == "mtr_api_calls"
    assert sorted(difference["identifiers"]) == ["u1", "u3", "u5"]
    assert report["drift_events"] == 5

    stored = SyncStore(db).latest_drift_report()
    assert stored is not None and stored["id"] == report["id"] and stored["drift_events"] == 5
    human = cli(database_url, "drift", **stripe_env(emulator)).stdout
    assert "cus_11 api_calls (mtr_api_calls)" in human and "difference 5" in human


def test_prune_deletes_the_attempt_history_with_its_rows(database_url, db):
    """The attempt history has no foreign key (its check cost more than the insert on the
    outcome statement): prune deletes a row's attempts in the same statement as the row."""
    insert_usage(database_url, 2, customers=2)
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action,"
        " state, http_status) SELECT id, 1, 0, 'report', 'accepted', 200 FROM meter_event_outbox"
    )
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now(),"
        " updated_at = now() - interval '40 days' WHERE identifier = 'u1'"
    )
    from relay.db import operations as ops

    assert ops.prune(db, older_than_days=35) == 1
    kept = scalar(
        db,
        "SELECT array_agg(o.identifier) FROM meter_event_outbox_attempts a"
        " JOIN meter_event_outbox o ON o.id = a.outbox_id",
    )
    assert kept == ["u2"]
    assert scalar(db, "SELECT count(*) FROM meter_event_outbox_attempts") == 1


def test_retry_all_skips_rejected_rows_in_one_line(database_url, db):
    """Rejected rows are not billed on a resend: `retry --all` leaves them out and says how
    many in one line, instead of one "refused" line per rejected row."""
    insert_usage(database_url, 62, customers=3)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'rejected', last_error_code = 'no_meter',"
        " first_attempt_at = now() WHERE identifier NOT IN ('u1', 'u2')"
    )
    fail(db, "u1")
    fail(db, "u2")
    done = cli(database_url, "retry", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "requeued 2 row(s)",
        "skipped 60 rejected row(s): Stripe will not bill a resend under the same identifier;"
        " record corrected usage under new identifiers, or add --include-rejected",
    ]
    assert done.stderr == ""
    assert states(database_url) == {"pending": 2, "rejected": 60}

    asked = cli(database_url, "retry", "--all", "--include-rejected", "--dry-run", "--json")
    assert asked.returncode == 3 and len(json.loads(asked.stdout)["refused"]) == 60
    forced = cli(database_url, "retry", "--all", "--include-rejected", "--force", "--json")
    assert len(json.loads(forced.stdout)["requeued"]) == 60
    assert states(database_url) == {"pending": 62}
    alone = cli(database_url, "retry", "--code", "x", "--include-rejected")
    assert alone.returncode == 2 and "goes with --all" in alone.stderr

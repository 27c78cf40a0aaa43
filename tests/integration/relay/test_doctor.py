"""`outbox-relay doctor` against a real database and the emulator: a healthy setup exits 0,
each problem is one line with its fix and exits 3, "could not check" is a warning unless
--strict, an unreachable database exits 1; never a traceback or a secret."""

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from relay.cli.commands import main
from relay.db import roles
from relay.emulator import Emulator, EmulatorConfig, EventDestination, Meter
from tests.support.relay import TEST_KEY

SECRET = "whsec_doctor_suite"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        rate_limit_test=None,
        rate_limit_live=None,
        webhook_url="http://127.0.0.1:9/webhooks/stripe",
        meters=(Meter("api_calls"), Meter("tokens", customer_key="customer_id", value_key="n")),
    )


def doctor(database_url: str, emulator: Emulator, *args: str, **env: str) -> Result:
    values = {
        "OUTBOX_DATABASE_URL": database_url,
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "OUTBOX_STRIPE_API_BASE": emulator.base_url,
        **env,
    }
    return CliRunner().invoke(main, ["doctor", *args], env=values)


def record(database_url: str, event_name: str, account: str | None = None) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage(%s, 'cus_1', 1, %s, stripe_account => %s)",
            (event_name, f"{event_name}-{account}", account),
        )


def checks(result: Result) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(result.output)["checks"]
    return found


def test_healthy_setup_exits_0(database_url: str, emulator: Emulator) -> None:
    record(database_url, "api_calls")
    record(database_url, "tokens")
    result = doctor(database_url, emulator)
    assert result.exit_code == 0, result.output
    assert "PROBLEM" not in result.output
    assert "custom keys customer_id/n (handled)" in result.output
    assert "receives the meter error events" in result.output
    assert "accepted (test mode, secret key)" in result.output


def test_every_problem_is_one_line_with_its_fix_and_exits_3(
    database_url: str, emulator: Emulator
) -> None:
    emulator.add_meter(Meter("retired", active=False))
    emulator.add_meter(Meter("gauge", event_time_window="hour"))
    emulator.add_meter(Meter("latest", aggregation="last"))
    emulator.set_event_destinations(
        [EventDestination(enabled_events=("v1.billing.meter.no_meter_found",))]
    )
    for name in ("api_calls", "nothing_here", "retired", "gauge", "latest"):
        record(database_url, name)
    emulator.state.clock.advance(600)  # Stripe's Date header 10 minutes ahead
    result = doctor(database_url, emulator, "--json", STRIPE_WEBHOOK_SECRET="")
    assert result.exit_code == 3, result.output
    found = checks(result)
    problems = {c["message"].split(":")[0]: c for c in found if c["level"] == "problem"}
    messages = " ".join(c["message"] for c in found)
    assert "no meter; rows are held (meter_missing)" in messages
    assert "is inactive" in messages and "pre-aggregated per hour" in messages
    assert "no enabled destination receives" in messages
    assert "STRIPE_WEBHOOK_SECRET is not set" in messages
    assert any(c["area"] == "clocks" and c["level"] == "problem" for c in found)
    assert any(c["level"] == "warning" and "'last'" in c["message"] for c in found)
    assert all(c["fix"] for c in problems.values())
    assert "Traceback" not in result.output and TEST_KEY not in result.output


def test_restricted_key_could_not_check_is_a_warning_unless_strict(
    database_url: str, emulator: Emulator
) -> None:
    key = "rk_test_doctor_cannot_read"
    emulator.set_restricted_keys({key})
    record(database_url, "api_calls")
    lenient = doctor(database_url, emulator, STRIPE_API_KEY=key)
    assert lenient.exit_code == 0, lenient.output
    assert "could not check" in lenient.output and "restricted key" in lenient.output
    strict = doctor(database_url, emulator, "--strict", STRIPE_API_KEY=key)
    assert strict.exit_code == 3
    assert key not in lenient.output + strict.output


def test_refused_key_is_a_problem(database_url: str, emulator: Emulator) -> None:
    emulator.state.api_keys = {"sk_test_the_right_one"}
    result = doctor(database_url, emulator)
    assert result.exit_code == 3
    assert "refused by Stripe (401)" in result.output
    assert TEST_KEY not in result.output


def test_unreachable_database_exits_1(emulator: Emulator) -> None:
    result = doctor("postgresql://nobody:secret-pw@127.0.0.1:1/none", emulator)
    assert result.exit_code == 1
    assert "database: unreachable" in result.output
    assert "secret-pw" not in result.output and "Traceback" not in result.output


def test_connected_account_needs_events_from_other_accounts(
    database_url: str, emulator: Emulator
) -> None:
    record(database_url, "api_calls", account="acct_connected1")
    result = doctor(database_url, emulator)
    assert result.exit_code == 3
    assert "from connected accounts (events_from other_accounts)" in result.output
    emulator.set_event_destinations([EventDestination(events_from=("self", "other_accounts"))])
    assert doctor(database_url, emulator).exit_code == 0


def test_clock_skew_is_judged_by_the_relays_margin_setting(
    database_url: str, emulator: Emulator
) -> None:
    """One margin (OUTBOX_CLOCK_MARGIN) for the relay's window, its skew log line and doctor;
    doctor also compares the database's clock with Stripe's."""
    emulator.state.clock.advance(90)  # Stripe's Date header 90 s ahead of the database's
    wide = checks(doctor(database_url, emulator, "--json", OUTBOX_CLOCK_MARGIN="120"))
    assert [c["level"] for c in wide if c["area"] == "clocks"] == ["ok", "ok"]
    narrow = checks(doctor(database_url, emulator, "--json"))  # the default, 60 s
    clocks = [c["message"] for c in narrow if c["area"] == "clocks" and c["level"] == "problem"]
    assert len(clocks) == 2, clocks
    assert clocks[0].startswith("stripe is +")  # 89 or 90: a Date has whole seconds
    assert "s off this host (margin OUTBOX_CLOCK_MARGIN=60 s)" in clocks[0]
    assert clocks[1].startswith("the database is -") and "s off Stripe" in clocks[1]


def test_a_read_only_database_is_a_problem(database_url: str, emulator: Emulator) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    result = doctor(database_url, emulator, "--json")
    assert result.exit_code == 3, result.output
    (problem,) = [c for c in checks(result) if c["area"] == "database" and c["level"] == "problem"]
    assert "read-only" in problem["message"] and "primary" in problem["fix"]


def test_a_snapshot_isolation_default_is_a_warning_with_its_fix(
    database_url: str, emulator: Emulator
) -> None:
    """The relay's single statements are written for READ COMMITTED (its claims pin it)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'"
            ).format(sql.Identifier(conn.info.dbname))
        )
    result = doctor(database_url, emulator, "--json")
    assert result.exit_code == 0, result.output  # a warning, unless --strict
    (warning,) = [c for c in checks(result) if "default_transaction_isolation" in c["message"]]
    assert warning["level"] == "warning" and "repeatable read" in warning["message"]
    assert warning["fix"] == (
        "ALTER ROLE postgres SET default_transaction_isolation = 'read committed'"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RESET default_transaction_isolation").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    again = doctor(database_url, emulator, "--json")
    assert not [c for c in checks(again) if "default_transaction_isolation" in c["message"]]


def test_a_schema_every_role_may_create_in_is_a_warning_with_its_fix(
    database_url: str, emulator: Emulator
) -> None:
    """PostgreSQL 14 and older let every role create in `public`: doctor says so, with the
    one-line fix, without failing the run; a role granted CREATE is named."""
    record(database_url, "api_calls")
    roles.apply(database_url)  # the role granted CREATE below
    assert "only its owner may create in schema public" in doctor(database_url, emulator).output
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        result = doctor(database_url, emulator)
        assert result.exit_code == 0, result.output
        (line,) = [line for line in result.output.splitlines() if "may create" in line]
        assert line.startswith("warning") and "every role may create in schema public" in line
        assert line.endswith("-> REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute("GRANT CREATE ON SCHEMA public TO outbox_writer")
        try:
            result = doctor(database_url, emulator)
        finally:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM outbox_writer")
        assert "besides its owner may create in schema public: outbox_writer" in result.output

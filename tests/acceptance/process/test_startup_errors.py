"""Every configuration or startup error ends a command with ONE line that says what to fix,
no traceback, no secret, and exit code 2 (configuration) or 1 (runtime). `run` writes that line
as a JSON log line (its whole output is JSON lines); operator commands write a plain line."""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

from outbox.dburl import with_database
from tests.helpers import free_port
from tests.support.relay import TEST_KEY

CLI = [sys.executable, "-m", "relay.cli"]
PASSWORD = "hunter2-Secret"
UNREACHABLE = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/app"


def cli(*args: str, **env: str) -> tuple[int, list[str]]:
    """Run a command with the given variables; its exit code and every line it printed."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OUTBOX_", "STRIPE_")) or k == "OUTBOX_TEST_DATABASE_URL"
    }
    key = {} if "STRIPE_API_KEY_FILE" in env else {"STRIPE_API_KEY": TEST_KEY}
    env = {**key, "OUTBOX_HTTP_PORT": str(free_port()), **env}
    out = subprocess.run(
        [*CLI, *args], env={**clean, **env}, capture_output=True, text=True, timeout=90
    )
    return out.returncode, (out.stdout + out.stderr).splitlines()


def run_fails(code: int, must_say: str, **env: str) -> str:
    """`run` exits with `code` after exactly one JSON line naming `must_say`; returns it."""
    returned, lines = cli("run", **env)
    assert returned == code, lines
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["event"] == "fatal" and line["exit_code"] == code
    assert must_say in line["error"] and "Traceback" not in lines[0]
    assert PASSWORD not in lines[0]
    return line["error"]


def each(check: Callable[..., object], cases: list[dict[str, str]]) -> None:
    """Run `check(**case)` for every case at once (each starts its own interpreter)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda case: check(**case), cases))


def test_a_rate_limit_that_cannot_pace_is_refused_at_start() -> None:
    cases = [
        {"OUTBOX_RATE_LIMIT": value, "OUTBOX_DATABASE_URL": UNREACHABLE}
        for value in ("0", "-5", "nan", "inf", "fast")
    ]
    each(lambda **env: run_fails(2, "OUTBOX_RATE_LIMIT", **env), cases)


def test_an_empty_relay_id_is_refused() -> None:
    run_fails(2, "OUTBOX_RELAY_ID", OUTBOX_DATABASE_URL=UNREACHABLE, OUTBOX_RELAY_ID="")


def test_a_malformed_database_url_never_shows_its_password() -> None:
    def refused(url: str) -> None:
        run_fails(2, "OUTBOX_DATABASE_URL", OUTBOX_DATABASE_URL=url)
        returned, lines = cli("status", OUTBOX_DATABASE_URL=url)
        assert returned == 2 and len(lines) == 1 and PASSWORD not in lines[0], lines
        assert lines[0].startswith("outbox-relay: error: ")

    urls = [
        f"mysql://relay:{PASSWORD}@db/app",
        f"postgresql://relay:{PASSWORD}@db:port/app",
        f"postgresql://relay:{PASSWORD}@db:5432/app?bad option",
    ]
    each(refused, [{"url": url} for url in urls])


def test_an_unreachable_database_is_a_runtime_error() -> None:
    run_fails(1, "cannot reach the database", OUTBOX_DATABASE_URL=UNREACHABLE)

    def refused(command: list[str]) -> None:
        returned, lines = cli(*command, OUTBOX_DATABASE_URL=UNREACHABLE)
        assert returned == 1 and len(lines) == 1 and PASSWORD not in lines[0], (command, lines)

    commands = [["status"], ["migrate"], ["prune"], ["inspect", "x"]]
    each(refused, [{"command": command} for command in commands])


def test_a_database_that_does_not_exist_is_a_configuration_error(pg_admin_url: str) -> None:
    url = with_database(pg_admin_url, "outbox_no_such_database")
    run_fails(2, "does not exist", OUTBOX_DATABASE_URL=url)


def test_a_missing_or_unreadable_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):  # absent; a directory cannot be read
        run_fails(
            2, "STRIPE_API_KEY_FILE", OUTBOX_DATABASE_URL=UNREACHABLE, STRIPE_API_KEY_FILE=str(path)
        )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    said = run_fails(
        2, "STRIPE_API_KEY_FILE", OUTBOX_DATABASE_URL=UNREACHABLE, STRIPE_API_KEY_FILE=str(empty)
    )
    assert "empty" in said


def test_a_port_in_use_is_a_runtime_error(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        run_fails(1, "in use", OUTBOX_DATABASE_URL=database_url, OUTBOX_HTTP_PORT=port)


def test_an_address_of_another_machine_is_a_configuration_error(database_url: str) -> None:
    run_fails(2, "OUTBOX_HTTP_HOST", OUTBOX_DATABASE_URL=database_url, OUTBOX_HTTP_HOST="192.0.2.1")


def test_a_guessable_or_empty_console_token_is_refused_at_start(tmp_path: Path) -> None:
    """Refused before anything listens: an empty token would mean no sign-in at all."""
    one_char = tmp_path / "one-char"
    one_char.write_text("x" * 40 + "\n")
    cases = [
        {"OUTBOX_CONSOLE_TOKEN": ""},
        {"OUTBOX_CONSOLE_TOKEN": " "},
        {"OUTBOX_CONSOLE_TOKEN": "short-token"},
        {"OUTBOX_CONSOLE_TOKEN": "a" * 64},
        {"OUTBOX_CONSOLE_TOKEN": "", "OUTBOX_CONSOLE_ACTIONS": "true"},
        {"OUTBOX_CONSOLE_TOKEN_FILE": str(one_char)},
    ]

    def refused(**env: str) -> None:
        error = run_fails(2, "OUTBOX_CONSOLE_TOKEN", OUTBOX_DATABASE_URL=UNREACHABLE, **env)
        assert "openssl rand" in error

    each(refused, cases)


def test_a_read_only_database_is_a_runtime_error(database_url: str) -> None:
    """A failover that points the relay at a replica: `run` refuses to start (a restart may
    find the primary), instead of serving /healthz while claiming nothing."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    error = run_fails(1, "is read-only", OUTBOX_DATABASE_URL=database_url)
    assert "point it at the primary" in error

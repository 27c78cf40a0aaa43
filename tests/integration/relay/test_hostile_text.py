"""Text from Stripe or an application never drives the operator's terminal or rich's markup:
ESC sequences, BEL, OSC titles, bidi overrides and `[/]` go through every command that prints
a row, and come out as visible escapes and literal brackets."""

import json

import psycopg
import pytest

from tests.integration.relay.test_operator_commands import cli

# Clear screen, an OSC window title ended by BEL, a bare BEL, a bidi override, rich markup.
HOSTILE = "x\x1b[2J\x1b]0;owned\x07\x07\u202egnp.exe[/][bold red]"
RAW = ("\x1b", "\x07", "\u202e")
SHOWN = "x\\x1b[2J\\x1b]0;owned\\x07\\x07\\u202egnp.exe[/][bold red]"
IDENTIFIER = "order-[/]-[bold]1"  # identifiers are printable ASCII: markup is what is left


@pytest.fixture
def hostile_row(db: psycopg.Connection) -> None:
    """A failed row whose code, message, metadata and attempt came from a hostile upstream."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, metadata,"
        " state, attempts, last_error_code, last_error_message, first_attempt_at)"
        " VALUES (%s, 'api_calls', 'cus_[/]', 1, jsonb_build_object('note', %s::text),"
        " 'failed', 1, %s, %s, now())",
        (IDENTIFIER, HOSTILE, HOSTILE, HOSTILE),
    )
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action,"
        " state, http_status, code, message, stripe_request_id)"
        " SELECT id, 1, 0, 'report', 'failed', 400, %s, %s, %s FROM meter_event_outbox",
        (HOSTILE, HOSTILE, HOSTILE),
    )


COMMANDS = [
    (["status"], 0),
    (["status", "--fail-if-failed", "1"], 5),
    (["list"], 0),
    (["list", "--code", HOSTILE], 0),
    (["inspect", IDENTIFIER], 0),
    (["retry", "--code", HOSTILE, "--dry-run"], 0),
    (["retry", IDENTIFIER, "--dry-run"], 0),
    (["cancel", IDENTIFIER], 0),
    (["inspect", "no-such-[/]\x1b]0;x\x07"], 1),
]


@pytest.mark.parametrize(("args", "code"), COMMANDS, ids=lambda v: str(v)[:30])
def test_every_command_shows_hostile_text_as_escapes(database_url, hostile_row, args, code):
    ran = cli(database_url, *args)
    output = ran.stdout + ran.stderr
    assert ran.returncode == code, output
    assert not any(raw in output for raw in RAW), output
    if args[0] in ("status", "inspect", "list") and code != 1:
        assert SHOWN in output  # shown, with its brackets, not swallowed as markup


@pytest.mark.parametrize("args", [["status", "--json"], ["list", "--json"], ["inspect", "--json"]])
def test_json_output_keeps_the_exact_text(database_url, hostile_row, args):
    """Machines get the exact bytes, JSON-escaped (no raw control reaches a terminal)."""
    if args[0] == "inspect":
        args = ["inspect", IDENTIFIER, "--json"]
    ran = cli(database_url, *args)
    assert not any(raw in ran.stdout for raw in RAW)
    assert json.dumps(HOSTILE)[1:-1] in ran.stdout

"""Log scrubbing and the one-JSON-object-per-line rule, for the relay's events and for
records that libraries send through the standard `logging` module."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from relay.core import logs
from relay.core.logs import scrub


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("key sk_live_51Habc123 refused", "sk_live_51Habc123"),
        ("restricted rk_test_9zz used", "rk_test_9zz"),
        ("secret whsec_abc_DEF1 set", "whsec_abc_DEF1"),
        ("session ek_live_tok3n expired", "ek_live_tok3n"),
        ("postgresql://relay:hunter2@db:5432/app", "hunter2"),
        ("connect postgres://u:p%40ss@h/db failed", "p%40ss"),
    ],
)
def test_secrets_are_masked(text: str, hidden: str) -> None:
    assert hidden not in scrub(text)


def test_a_url_keeps_its_user_and_host() -> None:
    assert scrub("postgresql://relay:hunter2@db:5432/app") == "postgresql://relay:***@db:5432/app"


def test_ordinary_text_is_unchanged() -> None:
    text = "identifier sk-123 for cus_42 at https://api.stripe.com/v1/billing/meter_events"
    assert scrub(text) == text


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(level="DEBUG", json=True, stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line written, each parsed as one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_library_records_and_tracebacks_are_single_json_lines(
    json_logs: io.StringIO,
) -> None:
    logging.getLogger("psycopg.pool").warning("error connecting:\n\tIs the server running?")
    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    try:
        raise ConnectionResetError("Connection lost")
    except ConnectionResetError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
        structlog.get_logger("relay").error("claim_failed", exc_info=True)
    found = lines(json_logs)
    assert [line["event"] for line in found] == [
        "error connecting:\n\tIs the server running?",
        "Context impl PostgresqlImpl.",
        "Error handling request",
        "claim_failed",
    ]
    assert all("ConnectionResetError" in str(line["exception"]) for line in found[2:])


def test_secrets_are_scrubbed_from_library_records_too(
    json_logs: io.StringIO,
) -> None:
    logging.getLogger("stripe").warning("bad key sk_live_51Habc123")
    logging.getLogger("psycopg.pool").warning("to postgresql://u:hunter2@db/app: refused")
    structlog.get_logger("relay").warning("sent", url="postgresql://u:hunter2@db/app")
    text = json.dumps(lines(json_logs))
    assert "sk_live_51Habc123" not in text and "hunter2" not in text


def test_a_fatal_error_is_one_line_with_its_exit_code(
    json_logs: io.StringIO,
) -> None:
    logs.fatal("set OUTBOX_DATABASE_URL", 2)
    (line,) = lines(json_logs)
    assert line["event"] == "fatal" and line["exit_code"] == 2 and "exception" not in line

"""Timestamps Python's datetime cannot hold. Nothing in the schema keeps available_at within
years 1-9999 (an owner may write 'infinity', '-infinity' or a date BC by hand): the claim takes
such a due row (test_top_up_cursor, test_hostile_top_up), and an operator must still be able to
look at it with `inspect`, `list` and the console's row page."""

from datetime import UTC, datetime

import aiohttp
import psycopg

from relay.db import operations
from relay.emulator import Emulator
from tests.support.console import served
from tests.support.relay import insert_usage

ODD = {"u1": "-infinity", "u2": "infinity", "u3": "0044-03-15 BC"}


def _oddly_timed(database_url: str, db: psycopg.Connection) -> None:
    insert_usage(database_url, 3)
    for identifier, when in ODD.items():
        db.execute(
            "UPDATE meter_event_outbox SET available_at = %s::timestamptz WHERE identifier = %s",
            (when, identifier),
        )


def test_inspect_and_list_show_rows_timed_beyond_python_s_years(
    database_url: str, db: psycopg.Connection
) -> None:
    _oddly_timed(database_url, db)
    with operations.connect(database_url) as conn:
        told = {i: operations.inspect(conn, i) for i in ODD}
        listed = operations.list_rows(conn)
    lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    assert {i: r["available_at"] for i, r in told.items() if r} == {
        "u1": lowest,
        "u2": highest,
        "u3": lowest,
    }
    assert all(r and r["summary"].startswith("waiting to be sent") for r in told.values())
    assert {r["identifier"] for r in listed} == set(ODD)


async def test_the_console_shows_rows_timed_beyond_python_s_years(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    _oddly_timed(database_url, db)
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        pages = {}
        for identifier in ODD:
            async with session.get(
                f"{app.url}/console/row", params={"identifier": identifier}
            ) as response:
                pages[identifier] = (response.status, await response.text())
    assert {i: status for i, (status, _) in pages.items()} == {i: 200 for i in ODD}
    assert "never due (its time is infinity)" in pages["u2"][1]
    assert "never due" not in pages["u1"][1] and "never due" not in pages["u3"][1]

"""The outage banner in a real browser: a relay meets a 503 outage on the emulator and opens
the shared breaker; the consoles of two other replicas (after that relay stopped) both show the
same banner, read from the database, with the figures the breaker keeps."""

import asyncio
import contextlib

import psycopg

from relay.db import outage
from relay.db.store import SyncStore
from relay.emulator import Emulator
from tests.support.browser import screenshot
from tests.support.console import served
from tests.support.relay import insert_usage, make_settings, running_relay


def _banner(driver, base: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/console")
    text = driver.find_element(By.ID, "outage-line").text
    assert "one probe call at a time" in driver.find_element(By.ID, "outage-detail").text
    # The card of unsent rows agrees with the banner: no row is said to be due now.
    unsent = driver.find_element(By.ID, "unsent").text
    assert "waiting for a relay" not in unsent and "due now" not in unsent, unsent
    screenshot(driver, name)
    return str(text)


def _shared_line(database_url: str) -> str | None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return outage.line(outage.report(SyncStore(conn).outage_state()))


async def _open(database_url: str) -> bool:
    return _shared_line(database_url) is not None


async def test_every_console_shows_the_outage_banner(
    browser,
    database_url: str,
    emulator: Emulator,
) -> None:
    insert_usage(database_url, 40, customers=10)
    emulator.start_outage(600, mode="503")
    settings = make_settings(
        database_url,
        emulator,
        relay_id="sender",
        outage_threshold=5,
        outage_probe_interval=60,  # no probe while the banner is read: the figures stay put
    )
    async with running_relay(settings) as relay:
        await relay.until(lambda: _open(database_url), timeout=30)
    # The relay has stopped; the state stays in the database for every replica to read.
    expected = _shared_line(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        shared = SyncStore(conn).outage_state()
        (calls,) = conn.execute("SELECT count(*) FROM meter_event_outbox_attempts").fetchone()
    assert shared is not None and shared.calls == calls  # every call made counts in the figures
    async with contextlib.AsyncExitStack() as stack:
        consoles = [
            await stack.enter_async_context(served(database_url, emulator, relay_id=name))
            for name in ("console-a", "console-b")
        ]
        first = await asyncio.to_thread(_banner, browser, consoles[0].url, "outage-banner")
        second = await asyncio.to_thread(_banner, browser, consoles[1].url, "outage-banner-b")
    assert first == second == expected
    assert first.startswith("Stripe answers 503 for ") and first.endswith("; rows wait, none fail")

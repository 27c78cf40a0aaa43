"""The console in a real browser: Debian's headless Chromium driven by Selenium signs in,
reads the overview's numbers and checks them against the database, follows a failed row to
its story, retries it (token + CSRF) and saves screenshots under artifacts/ (a CI artifact)."""

import asyncio

import psycopg

from relay.emulator import Emulator
from tests.support.browser import follow, screenshot
from tests.support.console import TOKEN, db_counts, seed, served
from tests.support.outage import SEEDED, UNSENT, seed_outage
from tests.support.relay import row


def _walk(driver, base: str, database_url: str, seeded) -> None:
    """Everything the browser does (blocking Selenium calls, run in a thread)."""
    from selenium.webdriver.common.by import By

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    driver.get(f"{base}/console")
    assert driver.current_url.endswith("/console/login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    follow(driver, driver.find_element(By.ID, "sign-in"))
    assert driver.current_url.endswith("/console")

    expected = db_counts(database_url)
    for state in ("pending", "in_flight", "accepted", "failed", "rejected", "cancelled"):
        assert text(f"count-{state}") == f"{expected.get(state, 0):,}", state
    with psycopg.connect(database_url) as conn:
        (oldest,) = conn.execute(
            "SELECT min(created_at) FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"
        ).fetchone()
        (calls,) = conn.execute("SELECT count(*) FROM meter_event_outbox_attempts").fetchone()
    lag = driver.find_element(By.ID, "lag").text
    assert oldest.strftime("%Y-%m-%d %H:%M:%S") in lag  # shown in UTC, like the database's
    assert text("hour-accepted") == str(len(seeded.accepted))
    assert text("hour-calls") == str(calls) and text("hour-error-rate") == "100.0 %"
    screenshot(driver, "overview")

    follow(driver, driver.find_element(By.LINK_TEXT, seeded.failed[0]))
    assert text("row-state") == "failed"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")) >= 3
    screenshot(driver, "row")

    follow(driver, driver.find_element(By.ID, "retry"))
    assert "Requeued" in text("notice")
    assert text("row-state") == "pending"
    assert row(database_url, seeded.failed[0])["state"] == "pending"
    screenshot(driver, "retried")


async def test_console_in_chromium(browser, database_url: str, emulator: Emulator) -> None:
    seeded = seed(database_url)
    async with served(database_url, emulator, console_token=TOKEN, console_actions=True) as app:
        await asyncio.to_thread(_walk, browser, app.url, database_url, seeded)


def _hostile_walk(driver, base: str, identifier: str, hostile_shown: str) -> None:
    """Overview, failures of the code, the row: each shows the escapes, none the raw text."""
    from selenium.webdriver.common.by import By

    def check(name: str) -> None:
        page = driver.page_source
        assert "\u202e" not in page and "\x1b" not in page and "\x07" not in page, name
        assert hostile_shown in driver.find_element(By.TAG_NAME, "body").text, name
        screenshot(driver, f"hostile-{name}")

    driver.get(f"{base}/console")
    check("overview")
    follow(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "gnp.exe"))
    check("failures")
    follow(driver, driver.find_element(By.LINK_TEXT, identifier))
    check("row")


async def test_console_shows_bidi_and_control_characters_visibly(
    browser, database_url: str, emulator: Emulator
) -> None:
    """A code and message from Stripe holding ESC, BEL, an OSC title, U+202E and markup."""
    hostile = "x\x1b]0;owned\x07\u202egnp.exe <b>[/]</b>"
    identifier = "order-[/]-1"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
            " attempts, last_error_code, last_error_message, first_attempt_at)"
            " VALUES (%s, 'api_calls', 'cus_1', 1, 'failed', 1, %s, %s, now())",
            (identifier, hostile, hostile),
        )
    shown = "x\\x1b]0;owned\\x07\\u202egnp.exe <b>[/]</b>"
    async with served(database_url, emulator) as app:
        await asyncio.to_thread(_hostile_walk, browser, app.url, identifier, shown)


def _outage_walk(driver, base: str) -> None:
    """The overview during a seeded outage: every bucket with rows, and the total they add to."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/console")
    shown = {}
    for key, groups in SEEDED.items():
        cells = driver.find_elements(By.CSS_SELECTOR, f"#bucket-{key} td")
        shown[key] = int(cells[1].text.replace(",", ""))
        assert shown[key] == sum(n for _, _, n in groups), key
    total = int(driver.find_element(By.ID, "unsent-total").text.replace(",", ""))
    assert total == sum(shown.values()) == UNSENT
    unsent = driver.find_element(By.ID, "unsent").text
    assert "held: key or account refused" in unsent and "acct_a" in unsent
    assert "retrying: Stripe did not answer" in unsent and "http_503" in unsent
    screenshot(driver, "outage-buckets")


async def test_console_overview_splits_unsent_rows_into_buckets_that_add_up(
    browser, database_url: str, emulator: Emulator
) -> None:
    seed_outage(database_url)
    async with served(database_url, emulator) as app:
        await asyncio.to_thread(_outage_walk, browser, app.url)

"""The console in a real browser: Debian's headless Chromium driven by Selenium signs in,
reads the overview's numbers and checks them against the database, follows a failed row to
its story, retries it (token + CSRF) and saves screenshots under artifacts/ (a CI artifact)."""

import asyncio
import base64
import os
import shutil
from pathlib import Path

import psycopg
import pytest

from relay.emulator import Emulator
from tests.support.console import TOKEN, db_counts, seed, served
from tests.support.outage import SEEDED, UNSENT, seed_outage
from tests.support.relay import row

ARTIFACTS = Path(os.environ.get("OUTBOX_ARTIFACTS_DIR", "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,1100",
)


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium/chromedriver are missing: .ci/run installs them")
        pytest.skip("no chromium + chromium-driver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, name: str) -> Path:
    """The whole page, below the fold too (Chromium's DevTools capture)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"\nconsole screenshot: {path.resolve()}")
    return path


def _walk(driver, base: str, database_url: str, seeded) -> None:
    """Everything the browser does (blocking Selenium calls, run in a thread)."""
    from selenium.webdriver.common.by import By

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    def follow(element) -> None:
        """Click, then wait for the next page: a click returns before the navigation ends, and
        on a loaded machine the old page is still there when the next line reads it."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        old = driver.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))

    driver.get(f"{base}/console")
    assert driver.current_url.endswith("/console/login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    follow(driver.find_element(By.ID, "sign-in"))
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
    _screenshot(driver, "overview")

    follow(driver.find_element(By.LINK_TEXT, seeded.failed[0]))
    assert text("row-state") == "failed"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")) >= 3
    _screenshot(driver, "row")

    follow(driver.find_element(By.ID, "retry"))
    assert "Requeued" in text("notice")
    assert text("row-state") == "pending"
    assert row(database_url, seeded.failed[0])["state"] == "pending"
    _screenshot(driver, "retried")


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
        _screenshot(driver, f"hostile-{name}")

    driver.get(f"{base}/console")
    check("overview")
    driver.find_element(By.PARTIAL_LINK_TEXT, "gnp.exe").click()
    driver.find_element(By.LINK_TEXT, identifier)  # waits for the failures page to load
    check("failures")
    driver.find_element(By.LINK_TEXT, identifier).click()
    driver.find_element(By.ID, "row-state")
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
    _screenshot(driver, "outage-buckets")


async def test_console_overview_splits_unsent_rows_into_buckets_that_add_up(
    browser, database_url: str, emulator: Emulator
) -> None:
    seed_outage(database_url)
    async with served(database_url, emulator) as app:
        await asyncio.to_thread(_outage_walk, browser, app.url)

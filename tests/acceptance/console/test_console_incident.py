"""The console during an incident, in Chromium: an outage leaves 120 rows retrying with
http_503, a few failed, rejected and held; a long drift report; three hours of calls. The
browser pauses the auto-refresh, pages through the README's `/console/failures?code=http_503`,
filters, bulk-retries the failed rows through the confirmation page, and reads one row's calls.
Screenshots go to artifacts/ (console-incident-*.png)."""

import asyncio
import json

import psycopg

from relay.emulator import Emulator
from tests.support.browser import follow, screenshot
from tests.support.console import TOKEN, served
from tests.support.relay import row

ROWS = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, attempts,
    last_error_code, last_error_message, first_attempt_at, available_at)
SELECT %(prefix)s || lpad(g::text, 3, '0'), %(meter)s, 'cus_' || (g %% 4), g, %(state)s,
       %(attempts)s, %(code)s, %(message)s, now() - interval '20 minutes',
       now() + interval '40 seconds'
FROM generate_series(1, %(n)s) g
"""
CALLS = """
INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt, key_generation,
    action, state, http_status, code)
SELECT 0, now() - make_interval(secs => g * 2),
       1, 0, 'report', CASE WHEN g < 1500 AND g % 10 < 9 THEN 'pending' ELSE 'accepted' END,
       CASE WHEN g < 1500 AND g % 10 < 9 THEN 503 ELSE 200 END,
       CASE WHEN g < 1500 AND g % 10 < 9 THEN 'http_503' END
FROM generate_series(1, 5000) g
"""


def _seed(database_url: str) -> None:
    """Rows of every kind that needs a look, calls for the chart, a drift report with 40
    differing groups (long identifiers, many per group)."""
    kinds = [
        ("out-", 120, "pending", "http_503", 0, "Service Unavailable", "api_calls"),
        ("bad-", 5, "failed", "http_500", 5, "Internal Server Error", "api_calls"),
        ("rej-", 2, "rejected", "no_meter", 1, "No meter for this event name", "old_calls"),
        ("key-", 3, "pending", "api_key_refused", 0, "Invalid API Key provided", "api_calls"),
    ]
    differences = [
        {
            "account": None,
            "customer": f"cus_{i}",
            "event_name": "api_calls",
            "meter": "mtr_0123456789",
            "hour": f"2026-12-06T{i % 10:02d}:00:00+00:00",
            "ours": 100 + i,
            "stripe": 90 + i,
            "difference": -10,
            "events": 12,
            "identifiers": [
                f"order-2026-12-06-{i:04d}-{j:02d}-a-rather-long-identifier" for j in range(9)
            ],
        }
        for i in range(40)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for prefix, n, state, code, attempts, message, meter in kinds:
            params = {"prefix": prefix, "n": n, "state": state, "code": code}
            conn.execute(ROWS, {**params, "attempts": attempts, "message": message, "meter": meter})
        conn.execute(CALLS)
        conn.execute(
            "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action,"
            " state, http_status, code, message, stripe_request_id, latency_ms) SELECT id, 0, 0,"
            " 'report', 'pending', 503, 'http_503', 'Service Unavailable', 'req_7Hq2LkV0cZ1xYb',"
            " 30021 FROM meter_event_outbox"
            " WHERE identifier = 'out-001'"
        )
        conn.execute(
            "INSERT INTO meter_event_outbox_drift_reports (since, until, groups, differing,"
            " unsettled, drift_events, differences) VALUES (now() - interval '1 day', now(), 400,"
            " 40, 0, 400, %s)",
            (json.dumps(differences),),
        )


def _walk(driver, base: str, database_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    def refreshes() -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]'))

    driver.get(f"{base}/console/login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    follow(driver, driver.find_element(By.ID, "sign-in"))

    # The overview: the chart, held codes in their bucket apart from retrying ones, a bounded
    # drift report.
    assert driver.find_element(By.ID, "chart-svg").is_displayed()
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-svg rect[fill='#1a7f4b']")
    assert driver.find_element(By.ID, "error-line")
    unsent = driver.find_element(By.ID, "unsent").text
    held = unsent.index("held: key or account refused")
    assert unsent.index("http_503") < held < unsent.index("api_key_refused")
    drift = driver.find_element(By.ID, "drift").size
    assert drift["height"] < 700, drift  # 40 differences, 9 long identifiers each
    assert len(driver.find_elements(By.CSS_SELECTOR, "#drift-differences tbody tr")) == 10
    assert "30 more difference(s)" in text("drift-more")
    assert (
        driver.find_element(By.ID, "drift").size["width"]
        <= driver.find_element(By.TAG_NAME, "main").size["width"]
    )
    assert refreshes() and "refreshing every 15 s" in text("refresh")
    screenshot(driver, "incident-overview")

    follow(driver, driver.find_element(By.ID, "refresh-toggle"))
    assert "refresh=off" in driver.current_url and not refreshes()
    assert "auto-refresh paused" in text("refresh")

    # The README's example: rows retrying with the code, 50 a page, a second and a third page.
    driver.get(f"{base}/console/failures?code=http_503&refresh=off")
    first = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#rows tbody td:first-child")]
    assert len(first) == 50 and first[0] == "out-001" and not refreshes()
    assert {p.text for p in driver.find_elements(By.CSS_SELECTOR, "#rows .pill")} == {"retrying"}
    screenshot(driver, "incident-list")
    follow(driver, driver.find_element(By.ID, "next-page"))
    second = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#rows tbody td:first-child")]
    assert second[0] == "out-051" and not set(first) & set(second)
    assert "refresh=off" in driver.current_url  # a paused list stays paused
    follow(driver, driver.find_element(By.ID, "next-page"))
    third = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#rows tbody td:first-child")]
    assert len(third) == 20 and driver.find_element(By.ID, "last-page")

    # Filter by state and customer, then by state alone, and bulk-retry the failed rows.
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("held")
    driver.find_element(By.ID, "filter-code").clear()
    follow(driver, driver.find_element(By.ID, "filter-apply"))
    held = driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
    assert len(held) == 3 and all("api_key_refused" in r.text for r in held)
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("failed")
    driver.find_element(By.ID, "filter-customer").send_keys("cus_1")
    follow(driver, driver.find_element(By.ID, "filter-apply"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 2  # bad-001, bad-005
    driver.find_element(By.ID, "filter-customer").clear()
    follow(driver, driver.find_element(By.ID, "filter-apply"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 5
    screenshot(driver, "incident-filtered")

    follow(driver, driver.find_element(By.ID, "bulk-retry"))
    assert text("bulk-count") == "5" and "5 failed row(s) would be requeued" in text("bulk-preview")
    screenshot(driver, "incident-confirm")
    follow(driver, driver.find_element(By.ID, "bulk-confirm"))
    assert "Requeued 5 row(s); 0 refused" in text("notice")
    assert text("no-rows")  # the failed list is empty now
    assert all(row(database_url, f"bad-00{i}")["state"] == "pending" for i in range(1, 6))
    screenshot(driver, "incident-retried")

    # One retrying row: one call, not counted against the budget, numbered alike everywhere.
    driver.get(f"{base}/console/row?identifier=out-001")
    assert "Retrying after 1 call(s) (0 counted against the retry budget)" in text("row-summary")
    assert text("row-calls").startswith("1 (0 counted")
    assert driver.find_element(By.CSS_SELECTOR, "#attempts tbody td").text == "#1"
    # Every column of the calls, request id and latency included, without scrolling sideways.
    calls = driver.find_element(By.ID, "calls")
    assert driver.execute_script("return arguments[0].scrollWidth", calls) <= calls.size["width"]
    assert "req_7Hq2LkV0cZ1xYb" in text("attempts") and "30021" in text("attempts")
    screenshot(driver, "incident-row")


async def test_console_for_an_incident_in_chromium(
    browser,
    database_url: str,
    emulator: Emulator,
) -> None:
    _seed(database_url)
    async with served(database_url, emulator, console_token=TOKEN, console_actions=True) as app:
        await asyncio.to_thread(_walk, browser, app.url, database_url)

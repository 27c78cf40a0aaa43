"""The console after Stripe dropped 100 facts and confirmed the rest, in real Chromium: the
overview counts accepted rows as confirmed / awaiting / drifting and 100 rejected; a row page
says an inferred rejection came from the error report, and a confirmed row by which summary;
/metrics carries the same numbers. Screenshots under artifacts/."""

import asyncio

import aiohttp
import psycopg

from relay.emulator import Emulator
from tests.support.browser import follow, screenshot
from tests.support.console import TOKEN, served

REPORT = "evt_test_dropped100"


def seed_after_drop(database_url: str) -> None:
    """What the relay leaves after the 100-dropped scenario: 10 rows named by the report, 90
    inferred, 20 accepted rows of another customer confirmed, 20 in a drifting hour."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
            " occurred_at, last_error_code, inferred_from, accepted_at, updated_at)"
            " SELECT 'ghost' || g, 'api_calls', 'cus_ghost', 1, 'rejected',"
            " date_trunc('hour', now()) - interval '90 minutes', 'meter_event_customer_not_found',"
            " CASE WHEN g > 10 THEN %s END, now() - interval '1 hour',"
            " now() - interval '1 hour' FROM generate_series(1, 100) g",
            (REPORT,),
        )
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
            " occurred_at, accepted_at, updated_at)"
            " SELECT c || g, 'api_calls', 'cus_' || c, 1, 'pending',"
            " date_trunc('hour', now()) - interval '90 minutes', now() - interval '80 minutes',"
            " now() - interval '80 minutes'"
            " FROM generate_series(1, 20) g, unnest(ARRAY['real', 'drift']) c"
        )
        # Accepted by an update, as the relay does (the maintained counters count those).
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'accepted', updated_at = accepted_at"
            " WHERE state = 'pending'"
        )
        conn.execute(
            "INSERT INTO meter_event_outbox_groups (stripe_account, customer, event_name, hour,"
            " state, due_at, events, value, stripe_value, summary_id, confirmed_at,"
            " counted_through, confirmed_through)"
            " SELECT '', 'cus_' || c, 'api_calls', date_trunc('hour', now()) - interval '2 hours',"
            " CASE c WHEN 'real' THEN 'confirmed' ELSE 'drift' END, now() + interval '1 hour',"
            " 20, 20, CASE c WHEN 'real' THEN 20 ELSE 15 END, 'mtrusg_seeded',"
            " CASE c WHEN 'real' THEN now() END, now() - interval '80 minutes',"
            " CASE c WHEN 'real' THEN now() - interval '80 minutes' END"
            " FROM unnest(ARRAY['real', 'drift']) c"
        )
        conn.execute(
            "UPDATE meter_event_outbox_confirmation_cursor"
            " SET through = now() - interval '1 minute', confirmed = 20"
        )
        conn.execute("SELECT outbox_fold_counts()")


def _walk(driver, base: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/console/login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    follow(driver, driver.find_element(By.ID, "sign-in"))
    driver.get(f"{base}/console")
    text = driver.find_element(By.ID, "confirmation").text
    assert "20 confirmed" in text and "0 awaiting confirmation" in text, text
    assert "20 in 1 drifting group(s)" in text, text
    assert driver.find_element(By.ID, "count-rejected").text == "100"
    screenshot(driver, "confirmation-overview")
    driver.get(f"{base}/console/row?identifier=ghost50")
    summary = driver.find_element(By.ID, "row-summary").text
    assert "inferred" in summary and REPORT in summary, summary
    screenshot(driver, "confirmation-inferred-row")
    driver.get(f"{base}/console/row?identifier=real1")
    summary = driver.find_element(By.ID, "row-summary").text
    assert "confirmed at" in summary and "mtrusg_seeded" in summary, summary
    screenshot(driver, "confirmation-confirmed-row")


async def test_console_and_metrics_tell_the_dropped_and_the_confirmed(
    browser,
    database_url: str,
    emulator: Emulator,
) -> None:
    seed_after_drop(database_url)
    async with served(database_url, emulator, console_token=TOKEN) as app:
        await asyncio.to_thread(_walk, browser, app.url)
        async with aiohttp.ClientSession() as session, session.get(f"{app.url}/metrics") as r:
            metrics = await r.text()
    assert 'outbox_relay_backlog_rows{state="rejected"} 100.0' in metrics
    assert 'outbox_relay_confirmation_rows{state="confirmed"} 20.0' in metrics
    assert 'outbox_relay_confirmation_rows{state="drifting"} 20.0' in metrics
    assert 'outbox_relay_confirmation_rows{state="awaiting"} 0.0' in metrics

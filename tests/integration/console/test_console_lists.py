"""The console's filtered list (keyset pages over bounded index reads), its bulk actions (the
CLI's rules, token and CSRF, a confirmed set), the overview's chart and refresh, held rows
kept apart from retrying ones, and call numbering that agrees on the row page."""

import re
from collections.abc import AsyncIterator

import aiohttp
import psycopg
import pytest

from relay.db.pool import make_pool
from relay.db.store import LOOK_KINDS, ConsoleStore, Look
from relay.emulator import Emulator
from tests.support.console import TOKEN, served
from tests.support.relay import row

INSERT = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, attempts,
    last_error_code, last_error_message, first_attempt_at, available_at)
SELECT %(prefix)s || g, %(meter)s, 'cus_' || (g %% 3), 1, %(state)s, %(attempts)s, %(code)s,
       'from the test', now() - make_interval(hours => %(first_hours)s),
       now() + interval '1 minute'
FROM generate_series(1, %(n)s) g
"""


def _add(db: psycopg.Connection, prefix: str, n: int, state: str, code: str | None, **kw) -> None:
    params = {"meter": "api_calls", "attempts": 1, "first_hours": 0, **kw}
    db.execute(INSERT, {"prefix": prefix, "n": n, "state": state, "code": code, **params})


def _mixed(db: psycopg.Connection) -> None:
    """Every kind of row that needs a look, interleaved by id, and rows that need none."""
    for round_ in range(3):
        _add(db, f"f{round_}-", 5, "failed", "http_503")
        _add(db, f"r{round_}-", 4, "rejected", "code_7")
        _add(db, f"p{round_}-", 6, "pending", "http_503", attempts=0)
        _add(db, f"k{round_}-", 2, "pending", "api_key_refused", attempts=0)
        _add(db, f"m{round_}-", 2, "pending", "meter_missing", attempts=0, meter="other")
        _add(db, f"a{round_}-", 7, "accepted", None)
        _add(db, f"n{round_}-", 3, "pending", None)  # never sent: needs no look


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConsoleStore]:
    pool = make_pool(database_url, max_size=2)
    await pool.open(wait=True)
    try:
        yield ConsoleStore(pool)
    finally:
        await pool.close()


async def _all_pages(store: ConsoleStore, look: Look, limit: int, scan: int) -> list[str]:
    """Every page of a filtered list, following next_after to the end."""
    seen: list[str] = []
    after: int | None = 0
    while after is not None:
        page = await store.look(look, after=after, limit=limit, scan=scan)
        seen += [r["identifier"] for r in page.rows]
        after = page.next_after
    return seen


def _expected(db: psycopg.Connection, where: str) -> list[str]:
    sql = f"SELECT identifier FROM meter_event_outbox WHERE {where} ORDER BY id"
    return [r[0] for r in db.execute(sql)]


LOOKS = {
    Look(): "state IN ('failed', 'rejected') OR (state = 'pending' AND last_error_code "
    "IS NOT NULL)",
    Look(kind="failed"): "state = 'failed'",
    Look(kind="rejected", code="code_7"): "state = 'rejected'",
    Look(kind="retrying"): "state = 'pending' AND last_error_code = 'http_503'",
    Look(kind="held"): "state = 'pending' AND last_error_code IN ('api_key_refused', "
    "'meter_missing')",
    Look(code="http_503"): "last_error_code = 'http_503' AND state <> 'accepted'",
    Look(customer="cus_1"): "customer = 'cus_1' AND (state IN ('failed', 'rejected') OR "
    "(state = 'pending' AND last_error_code IS NOT NULL))",
    Look(event_name="other"): "event_name = 'other'",
    Look(kind="held", customer="cus_2", event_name="api_calls"): "state = 'pending' AND "
    "last_error_code = 'api_key_refused' AND customer = 'cus_2'",
    Look(code="nothing_like_it"): "false",
}


@pytest.mark.parametrize("look", list(LOOKS), ids=[str(i) for i in range(len(LOOKS))])
async def test_keyset_pages_list_every_matching_row_once_in_order(
    store: ConsoleStore, db: psycopg.Connection, look: Look
) -> None:
    """Small pages and a small scan bound (the meter filter narrows within it): following the
    pages yields exactly the matching rows, each once, oldest first."""
    _mixed(db)
    assert await _all_pages(store, look, limit=4, scan=5) == _expected(db, LOOKS[look])
    assert await _all_pages(store, look, limit=50, scan=2000) == _expected(db, LOOKS[look])


async def test_a_page_reads_at_most_its_scan_bound_per_state(
    store: ConsoleStore, db: psycopg.Connection
) -> None:
    """A meter no row has: the page reads its bound, finds nothing, and says where to go on."""
    _mixed(db)
    page = await store.look(Look(event_name="none"), scan=5)
    assert page.rows == [] and page.next_after is not None
    assert LOOK_KINDS == ("failed", "rejected", "retrying", "held")


def _session() -> aiohttp.ClientSession:
    """A client that keeps the console's cookie (set by 127.0.0.1, an IP address)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _fetch(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def _signed_in(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/console/login", data={"token": TOKEN}) as response:
        assert response.status == 200
        page = await response.text()
    (csrf,) = set(re.findall(r'name="csrf" value="([^"]+)"', page))
    return csrf


async def test_readme_example_lists_rows_retrying_with_the_code(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    """`/console/failures?code=http_503` during an outage: the rows wait, none failed."""
    _add(db, "p", 3, "pending", "http_503", attempts=0)
    async with served(database_url, emulator) as app:
        page = await _fetch(f"{app.url}/console/failures?code=http_503")
    assert "No row" not in page and all(f">p{i}<" in page for i in (1, 2, 3))
    assert page.count(">retrying</span>") == 3


async def test_retrying_card_leaves_held_rows_out(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    _add(db, "k", 2, "pending", "api_key_refused", attempts=0)
    _add(db, "m", 1, "pending", "meter_missing", attempts=0)
    _add(db, "p", 1, "pending", "rate_limited")
    async with served(database_url, emulator) as app:
        page = await _fetch(f"{app.url}/console")
    retrying = page.split('id="retrying"')[1].split("</section>")[0]
    table, held_line = retrying.split('id="held-codes"')
    assert "rate_limited" in table
    assert "api_key_refused" not in table and "meter_missing" not in table
    assert "api_key_refused" in held_line and "meter_missing" in held_line


async def test_bulk_retry_confirms_the_count_and_follows_the_cli_rules(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    """Failed rows inside the dedup window are requeued; failed rows first sent before it and
    rejected rows are refused; pending rows are left alone; a row that fails after the
    confirmation is not taken (the confirmed set ends at the id it showed)."""
    _add(db, "fresh", 3, "failed", "http_500")
    _add(db, "old", 2, "failed", "http_500", first_hours=30)
    _add(db, "rej", 2, "rejected", "http_500")
    _add(db, "wait", 2, "pending", "http_500", attempts=0)
    async with (
        served(database_url, emulator, console_token=TOKEN, console_actions=True) as app,
        _session() as session,
    ):
        csrf = await _signed_in(session, app.url)
        confirm = f"{app.url}/console/bulk?action=retry&code=http_500"
        async with session.get(confirm) as response:
            page = await response.text()
        assert 'id="bulk-count">9<' in page
        assert "<strong>3</strong> failed row(s) would be requeued" in page
        assert "<strong>4</strong> refused" in page
        (upto,) = re.findall(r'name="upto" value="(\d+)"', page)
        _add(db, "late", 1, "failed", "http_500")  # after the confirmation: not in its set
        form = {"action": "retry", "code": "http_500", "upto": upto}
        async with session.post(f"{app.url}/console/bulk", data=form) as response:
            assert response.status == 403  # no CSRF token
        async with session.post(f"{app.url}/console/bulk", data={**form, "csrf": csrf}) as response:
            done = await response.text()
            assert response.status == 200 and "done=retry" in str(response.url)
    assert "Requeued 3 row(s); 4 refused" in done and "2 not failed" in done
    # the list refreshes without the notice (said once)
    assert 'content="15; url=/console/failures?code=http_500"' in done
    states = {i: row(database_url, i)["state"] for i in ("fresh1", "old1", "rej1", "late1")}
    assert states == {"fresh1": "pending", "old1": "failed", "rej1": "rejected", "late1": "failed"}


async def test_bulk_cancel_needs_actions_and_cancels_the_filtered_set(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    _add(db, "x", 2, "pending", "meter_missing", attempts=0, meter="other")
    _add(db, "y", 2, "pending", "http_503", attempts=0)
    db.execute("UPDATE meter_event_outbox SET first_attempt_at = NULL WHERE identifier LIKE 'x%'")
    async with (
        served(database_url, emulator, console_token=TOKEN) as app,
        _session() as session,
    ):
        csrf = await _signed_in(session, app.url)
        form = {"action": "cancel", "meter": "other", "upto": "999", "csrf": csrf}
        async with session.post(f"{app.url}/console/bulk", data=form) as response:
            assert response.status == 403  # OUTBOX_CONSOLE_ACTIONS is off
    async with (
        served(database_url, emulator, console_token=TOKEN, console_actions=True) as app,
        _session() as session,
    ):
        csrf = await _signed_in(session, app.url)
        async with session.get(f"{app.url}/console/bulk?action=cancel&meter=other") as response:
            assert 'id="bulk-count">2<' in await response.text()
        form = {"action": "cancel", "meter": "other", "upto": "999", "csrf": csrf}
        async with session.post(f"{app.url}/console/bulk", data=form) as response:
            assert "Cancelled 2 row(s) at once" in await response.text()
    assert [row(database_url, i)["state"] for i in ("x1", "x2", "y1")] == [
        "cancelled",
        "cancelled",
        "pending",
    ]


async def test_overview_draws_the_chart_and_refreshes_until_paused(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt,"
        " key_generation, action, state, http_status, code)"
        " SELECT g, now() - make_interval(mins => g % 90), 1, 0, 'report',"
        " CASE WHEN g % 4 = 0 THEN 'pending' ELSE 'accepted' END,"
        " CASE WHEN g % 4 = 0 THEN 503 ELSE 200 END,"
        " CASE WHEN g % 4 = 0 THEN 'http_503' END FROM generate_series(1, 400) g"
    )
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        async with session.get(f"{app.url}/console") as response:
            page = await response.text()
            csp = response.headers["Content-Security-Policy"]
        async with session.get(f"{app.url}/console?refresh=off") as response:
            paused = await response.text()
    assert csp.startswith("default-src 'none';") and "script" not in csp
    assert "<svg" in page and 'id="error-line"' in page and "<script" not in page
    assert "300 accepted" in page and "400 Stripe calls, 100 with an error (25.0 %)" in page
    assert '<meta http-equiv="refresh" content="15; url=/console">' in page
    assert 'href="/console?refresh=off"' in page
    assert 'http-equiv="refresh"' not in paused and "auto-refresh paused" in paused


async def test_row_page_numbers_calls_alike_in_summary_table_and_history(
    database_url: str, db: psycopg.Connection, emulator: Emulator
) -> None:
    """One 503 that did not count against the retry budget (attempts stays 0; the history
    stores 0): one call everywhere, 0 counted everywhere."""
    _add(db, "p", 1, "pending", "http_503", attempts=0)
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action,"
        " state, http_status, code) SELECT id, 0, 0, 'report', 'pending', 503, 'http_503'"
        " FROM meter_event_outbox WHERE identifier = 'p1'"
    )
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        async with session.get(f"{app.url}/console/row?identifier=p1") as response:
            page = await response.text()
        async with session.get(f"{app.url}/console/failures?code=http_503") as response:
            listed = await response.text()
    assert "Retrying after 1 call(s) (0 counted against the retry budget)" in page
    assert '<dd id="row-calls">1 (0 counted against the retry budget' in page
    assert "<td>#1</td>" in page and "#0" not in page
    assert 'title="calls counted against the retry budget">counted attempts' in listed


async def test_chart_reads_a_bounded_sample_and_scales_it(
    store: ConsoleStore, db: psycopg.Connection
) -> None:
    """20,000 calls in the last hour, one in four an error (ids growing with time, as the relay
    writes them), 10,000 more before the span: read whole when the span is within the exact
    bound, and estimated from one call in 20 when the bounds are 1,000."""
    db.execute(
        "INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt,"
        " key_generation, action, state, http_status, code)"
        " SELECT g, now() - make_interval(secs => (30000 - g) * 0.18), 1, 0, 'report',"
        " CASE WHEN g % 4 = 0 THEN 'pending' ELSE 'accepted' END, 200,"
        " CASE WHEN g % 4 = 0 THEN 'http_503' END FROM generate_series(1, 30000) g"
    )
    exact = await store.calls_per_minute(3600, exact=30_000)
    assert {m.stride for m in exact} == {1}
    calls = sum(m.calls for m in exact)
    assert 19_990 <= calls <= 20_000  # the span starts within a second of the 10,000th call
    assert sum(m.errors for m in exact) * 4 == pytest.approx(calls, abs=8)
    sampled = await store.calls_per_minute(3600, exact=1000, samples=1000)
    assert {m.stride for m in sampled} == {20}
    assert sum(m.calls for m in sampled) == pytest.approx(calls, rel=0.05)
    errors = sum(m.errors for m in sampled) / sum(m.calls for m in sampled)
    assert errors == pytest.approx(0.25, abs=0.05)

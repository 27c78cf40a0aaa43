"""The console over real HTTP: what it shows, who may see it, who may act and how."""

import asyncio
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import psycopg
import pytest

from relay.db.store import SyncStore
from relay.emulator import Emulator
from tests.support.console import TOKEN, seed, served
from tests.support.relay import row


async def _get(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False, **kw) as response:
        return response.status, await response.text()


async def _post(session: aiohttp.ClientSession, url: str, data: dict, **kw) -> tuple[int, str]:
    async with session.post(url, data=data, allow_redirects=False, **kw) as response:
        return response.status, await response.text()


async def _signed_in(session: aiohttp.ClientSession, base: str) -> str:
    """Sign in through the login form; returns the CSRF token rendered into pages."""
    async with session.post(f"{base}/console/login", data={"token": TOKEN}) as response:
        assert response.status == 200 and str(response.url).endswith("/console")
        page = await response.text()
    (csrf,) = set(re.findall(r'name="csrf" value="([^"]+)"', page))
    return csrf


async def test_overview_shows_the_tables_state(database_url: str, emulator: Emulator) -> None:
    seeded = seed(database_url)
    async with (
        served(database_url, emulator, rate_limit=100) as app,
        aiohttp.ClientSession() as session,
    ):
        status, page = await _get(session, f"{app.url}/console")
    assert status == 200
    for state, n in {"pending": 15, "accepted": 10, "failed": 3, "rejected": 2}.items():
        assert f'id="count-{state}">{n}<' in page
    assert "http_503" in page and "meter_event_customer_not_found" in page
    assert all(i in page for i in seeded.failed + seeded.rejected)
    assert "rate_limited" in page  # retrying rows by code
    assert "relay-a" in page and "relay-b" in page and ">50/s<" in page  # 100/s shared by 2
    assert "No drift report yet" in page
    assert "<b>x</b>" not in page  # messages are escaped (rejected rows' failures page)


async def test_row_story_lists_attempts_and_escapes(database_url: str, emulator: Emulator) -> None:
    seeded = seed(database_url)
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        status, page = await _get(
            session, f"{app.url}/console/row", params={"identifier": seeded.failed[0]}
        )
        _, rejected = await _get(
            session, f"{app.url}/console/row", params={"identifier": seeded.rejected[0]}
        )
        missing, gone = await _get(session, f"{app.url}/console/row", params={"identifier": "nope"})
        _, failures = await _get(
            session,
            f"{app.url}/console/failures",
            params={"code": "meter_event_customer_not_found"},
        )
    assert status == 200
    assert (
        page.count("req_fail_") == 3
        and "Failed after 3 call(s) (3 counted against the retry budget" in page
    )
    assert "Retry" not in page  # read-only console: no action offered
    assert "accepted at" not in rejected  # a rejected row shows no acceptance
    assert "No such customer &lt;b&gt;x&lt;/b&gt;" in failures
    assert missing == 404 and "pruned" in gone


async def test_read_only_console_refuses_actions(database_url: str, emulator: Emulator) -> None:
    seeded = seed(database_url)
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        retry = f"{app.url}/console/row/retry"
        status, _ = await _post(session, retry, {"identifier": seeded.failed[0]})
    assert status == 403
    assert row(database_url, seeded.failed[0])["state"] == "failed"


async def test_token_protects_every_page(database_url: str, emulator: Emulator) -> None:
    async with (
        served(database_url, emulator, console_token=TOKEN) as app,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
    ):
        for path in ("/console", "/console/row?identifier=u1", "/console/failures?code=x"):
            status, _ = await _get(session, app.url + path)
            assert status == 303, path
        status, _ = await _get(
            session, f"{app.url}/console", headers={"Authorization": "Bearer no"}
        )
        assert status == 303
        status, _ = await _get(
            session, f"{app.url}/console", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200
        async with session.post(f"{app.url}/console/login", data={"token": "wrong"}) as response:
            assert response.status == 401
        status, _ = await _get(session, f"{app.url}/console")
        assert status == 303


async def test_actions_need_token_csrf_and_same_origin(
    database_url: str, emulator: Emulator
) -> None:
    seeded = seed(database_url)
    target = seeded.failed[0]
    async with (
        served(database_url, emulator, console_token=TOKEN, console_actions=True) as app,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
    ):
        retry = f"{app.url}/console/row/retry"
        async with aiohttp.ClientSession() as stranger:
            assert (await _post(stranger, retry, {"identifier": target}))[0] == 403
        csrf = await _signed_in(session, app.url)
        refused = [
            {"identifier": target},
            {"identifier": target, "csrf": "0" * 64},
        ]
        for form in refused:
            async with session.post(retry, data=form, allow_redirects=False) as response:
                assert response.status == 403, form
        async with session.post(
            retry,
            data={"identifier": target, "csrf": csrf},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        ) as response:
            assert response.status == 403
        assert row(database_url, target)["state"] == "failed"
        async with session.post(retry, data={"identifier": target, "csrf": csrf}) as response:
            assert response.status == 200 and "Requeued" in await response.text()
        after = row(database_url, target)
        assert after["state"] == "pending" and after["key_generation"] == 1
        # A rejected row is not retried from the console (Stripe may call it a duplicate).
        async with session.post(
            retry, data={"identifier": seeded.rejected[0], "csrf": csrf}
        ) as response:
            assert "Not retried" in await response.text()
        # Scripts act with the bearer header (no cookie, so no CSRF token needed).
        async with aiohttp.ClientSession() as script:
            status, _ = await _post(
                script,
                f"{app.url}/console/row/cancel",
                {"identifier": seeded.fresh[0]},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert status == 303
    assert row(database_url, seeded.fresh[0])["state"] == "cancelled"
    assert row(database_url, seeded.rejected[0])["state"] == "rejected"


async def test_latest_drift_report_is_shown(database_url: str, emulator: Emulator) -> None:
    """The console shows the newest report `outbox-relay drift` stored, with the identifiers."""
    now = datetime.now(UTC)
    difference = {
        "account": None,
        "customer": "cus_0",
        "event_name": "api_calls",
        "meter": "mtr_api_calls",
        "hour": now.replace(minute=0, second=0, microsecond=0),
        "ours": 3,
        "stripe": 8,
        "difference": 5,
        "events": 3,
        "identifiers": ["fact-a", "fact-b"],
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        store = SyncStore(conn)
        for differences in ([], [difference]):
            store.save_drift_report(
                {
                    "since": now - timedelta(hours=24),
                    "until": now,
                    "groups": 4,
                    "differing": len(differences),
                    "unsettled": 0,
                    "drift_events": 5 * len(differences),
                    "differences": differences,
                }
            )
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        _, page = await _get(session, f"{app.url}/console")
        _, metrics_text = await _get(session, f"{app.url}/metrics")
    drift = page.split('id="drift"', 1)[1]
    assert "1 differ" in drift and "cus_0" in drift and "mtr_api_calls" in drift
    assert "identifier=fact-a" in drift
    assert "outbox_relay_drift_events 5.0" in metrics_text


class FrozenClock:
    """The brake's clock, moved by the test (no waiting on real seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_wrong_tokens_are_braked_logged_without_the_attempt_and_counted(
    database_url: str, emulator: Emulator
) -> None:
    from prometheus_client import REGISTRY
    from structlog.testing import capture_logs

    from relay.server.console import CONSOLE
    from relay.server.console.brake import FREE_FAILURES, SignInBrake

    def failures() -> float:
        return REGISTRY.get_sample_value("outbox_relay_console_signin_failures_total") or 0.0

    clock = FrozenClock()
    before = failures()
    async with (
        served(database_url, emulator, console_token=TOKEN) as app,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
    ):
        app.app[CONSOLE].brake = SignInBrake(clock)
        login = f"{app.url}/console/login"
        with capture_logs() as logs:
            for n in range(FREE_FAILURES + 1):
                guess = f"guess-{n}-" + "x" * 32
                async with session.post(login, data={"token": guess}) as response:
                    assert response.status == 401
            # Braked: even the right token is not looked at, by form or by bearer header.
            async with session.post(login, data={"token": TOKEN}) as response:
                assert response.status == 429 and response.headers["Retry-After"] == "1"
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            status, _ = await _get(session, f"{app.url}/console", headers=bearer)
            assert status == 429
            clock.now += 1.0
            status, _ = await _get(session, f"{app.url}/console", headers=bearer)
            assert status == 200
        async with session.post(login, data={"token": "wrong-again-" + "y" * 32}) as response:
            assert response.status == 401  # the right token cleared the record
    refused = [e for e in logs if e["event"] == "console_login_refused"]
    assert [e["failures"] for e in refused] == list(range(1, FREE_FAILURES + 2))
    assert [e["braked_for"] for e in refused][-1] == 1.0
    assert any(e["event"] == "console_login_braked" for e in logs)
    assert "guess-" not in repr(logs) and TOKEN not in repr(logs)
    assert failures() - before == FREE_FAILURES + 2


async def test_sign_out_revokes_the_session_everywhere(database_url: str, emulator: Emulator):
    """A copied cookie dies with the sign-out, whoever holds it (server-side sessions)."""
    from relay.server.console.auth import COOKIE

    async with (
        served(database_url, emulator, console_token=TOKEN) as app,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
    ):
        csrf = await _signed_in(session, app.url)
        (stolen,) = [c.value for c in session.cookie_jar if c.key == COOKIE]
        thief = {"Cookie": f"{COOKIE}={stolen}"}
        async with aiohttp.ClientSession() as other:
            assert (await _get(other, f"{app.url}/console", headers=thief))[0] == 200
            assert (await _post(session, f"{app.url}/console/logout", {"csrf": csrf}))[0] == 303
            assert (await _get(other, f"{app.url}/console", headers=thief))[0] == 303
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_console_sessions").fetchone() == (0,)


async def _login_cookie(base: str, **headers: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/console/login", data={"token": TOKEN}, headers=headers, allow_redirects=False
        ) as response,
    ):
        assert response.status == 303
        return response.headers["Set-Cookie"]


async def test_secure_cookie_behind_a_trusted_tls_proxy_only(
    database_url: str, emulator: Emulator
) -> None:
    https = {"X-Forwarded-Proto": "https"}
    async with served(database_url, emulator, console_token=TOKEN) as app:
        assert "Secure" not in await _login_cookie(app.url, **https)  # not a trusted proxy
    async with served(
        database_url, emulator, console_token=TOKEN, console_trusted_proxies="127.0.0.0/8"
    ) as app:
        assert "Secure" in await _login_cookie(app.url, **https)
        assert "Secure" not in await _login_cookie(app.url)


async def test_origin_check_includes_the_scheme(database_url: str, emulator: Emulator) -> None:
    seeded = seed(database_url)
    target = seeded.failed[0]
    async with (
        served(database_url, emulator, console_token=TOKEN, console_actions=True) as app,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
    ):
        csrf = await _signed_in(session, app.url)
        retry = f"{app.url}/console/row/retry"
        other_scheme = {"Origin": app.url.replace("http://", "https://")}
        status, _ = await _post(
            session, retry, {"identifier": target, "csrf": csrf}, headers=other_scheme
        )
        assert status == 403
        assert row(database_url, target)["state"] == "failed"
        status, _ = await _post(
            session, retry, {"identifier": target, "csrf": csrf}, headers={"Origin": app.url}
        )
        assert status == 303 and row(database_url, target)["state"] == "pending"


async def test_host_header_must_be_an_allowed_name(database_url: str, emulator: Emulator) -> None:
    """DNS rebinding: a page on rebound.example reaching 127.0.0.1 keeps its own Host name."""
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        port = app.url.rsplit(":", 1)[1]
        for host in (f"rebound.example:{port}", "rebound.example", f"127.0.0.1.nip.io:{port}"):
            status, _ = await _get(session, f"{app.url}/console", headers={"Host": host})
            assert status == 421, host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
            status, _ = await _get(session, f"{app.url}/console", headers={"Host": host})
            assert status == 200, host
        assert (await _get(session, f"{app.url}/metrics", headers={"Host": "x.example"}))[0] == 200
    async with (
        served(database_url, emulator, console_allowed_hosts="console.example.com") as app,
        aiohttp.ClientSession() as session,
    ):
        headers = {"Host": "console.example.com"}
        assert (await _get(session, f"{app.url}/console", headers=headers))[0] == 200
        assert (await _get(session, f"{app.url}/console"))[0] == 421


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "relay.internal"])  # noqa: S104 (the address under test, nothing binds it)
async def test_console_is_off_on_a_shared_address_without_a_token(
    database_url: str, emulator: Emulator, host: str
) -> None:
    from structlog.testing import capture_logs

    from relay.server import console

    with capture_logs() as logs:
        async with (
            served(database_url, emulator, http_host=host) as app,
            aiohttp.ClientSession() as session,
        ):
            assert (await _get(session, f"{app.url}/console"))[0] == 404
            assert (await _get(session, f"{app.url}/metrics"))[0] == 200
            console.announce(app.app)  # what serve_http does once it listens
    (line,) = [e for e in logs if e["event"] == "console_disabled"]
    assert line["log_level"] == "error" and "OUTBOX_CONSOLE_TOKEN" in line["fix"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
async def test_console_stays_on_for_loopback_or_with_a_token(
    database_url: str, emulator: Emulator, host: str
) -> None:
    async with (
        served(database_url, emulator, http_host=host) as app,
        aiohttp.ClientSession() as session,
    ):
        assert (await _get(session, f"{app.url}/console"))[0] == 200
    async with (
        served(database_url, emulator, http_host="0.0.0.0", console_token=TOKEN) as app,  # noqa: S104
        aiohttp.ClientSession() as session,
    ):
        assert (await _get(session, f"{app.url}/console"))[0] == 303  # sign in first


async def test_console_load_cannot_take_the_relays_connections(
    database_url: str, emulator: Emulator
) -> None:
    """Ten clients whose console statements hang (a lock held here) occupy the console's own
    small pool, not the relay's: /readyz's database check still gets a connection. (Pages of
    different filters: one page is built once for everyone, see shared.py; two at a time.)"""
    async with (
        served(database_url, emulator, console_trusted_proxies="127.0.0.0/8") as app,
        aiohttp.ClientSession() as session,
    ):
        with psycopg.connect(database_url) as lock:
            lock.execute("LOCK TABLE meter_event_outbox IN ACCESS EXCLUSIVE MODE")
            page = f"{app.url}/console/failures?code=x"
            viewers = [
                asyncio.create_task(
                    _get(session, f"{page}{i}", headers={"X-Forwarded-For": f"10.0.0.{i}"})
                )
                for i in range(10)
            ]
            await _until_lock_waiters(database_url, 2)
            assert await app.relay.store.ping()  # what /readyz asks of the relay's pool
            same_client = [
                asyncio.create_task(_get(session, page, headers={"X-Forwarded-For": "10.9.9.9"}))
                for _ in range(6)
            ]
            refused = await asyncio.wait_for(
                asyncio.shield(asyncio.gather(*same_client[4:])), timeout=30
            )
            assert [status for status, _ in refused] == [429, 429]  # over the per-client cap
            lock.rollback()
        answers = await asyncio.gather(*viewers, *same_client[:4])
    # 500: the console's statement timeout; 503: no building slot came free in time
    assert {status for status, _ in answers} <= {200, 500, 503}


async def _until_lock_waiters(database_url: str, n: int) -> None:
    """Until `n` sessions wait on a lock (the console's statements behind the test's lock)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(600):
            (waiting,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting >= n:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{n} lock waiters")

"""Console load cannot take the relay's event loop: a page is built once for all its viewers,
a few at a time, and all clients' requests together are paced (shared.py), over real HTTP."""

import asyncio
import re

import aiohttp
from prometheus_client import REGISTRY

from relay.emulator import Emulator
from relay.server.console import CONSOLE
from relay.server.console.shared import Pacer, SharedPages
from tests.support.console import TOKEN, seed, served


def _pages(page: str, source: str) -> float:
    value = REGISTRY.get_sample_value(
        "outbox_relay_console_pages_total", {"page": page, "source": source}
    )
    return value or 0.0


async def _status(session: aiohttp.ClientSession, url: str, client: str) -> int:
    async with session.get(url, headers={"X-Forwarded-For": client}) as response:
        await response.read()
        return response.status


async def test_twenty_clients_at_once_cost_one_build_per_page(
    database_url: str, emulator: Emulator
) -> None:
    """Twenty clients (each its own address: the per-client cap is not what answers them)
    open the overview and a failures page at once: each page is read and rendered once, the
    other nineteen get that copy. The TTL is long here so that a slow machine cannot make
    the copy expire between requests; pacing is off (it is tested below)."""
    seed(database_url)
    async with (
        served(database_url, emulator, console_trusted_proxies="127.0.0.0/8") as app,
        aiohttp.ClientSession() as session,
    ):
        console = app.app[CONSOLE]
        console.pages = SharedPages(ttl=3600)
        console.pacer = Pacer(rate=1_000_000)
        for page, path in (
            ("overview", "/console"),
            ("failures", "/console/failures?code=http_503"),
        ):
            built, shared = _pages(page, "built"), _pages(page, "shared")
            statuses = await asyncio.gather(
                *(_status(session, app.url + path, f"10.0.0.{i}") for i in range(20))
            )
            assert statuses == [200] * 20
            assert (_pages(page, "built") - built, _pages(page, "shared") - shared) == (1, 19)


async def test_a_shared_page_carries_each_viewers_own_csrf_token(
    database_url: str, emulator: Emulator
) -> None:
    """Two people signed in get the same built row page, each with their own CSRF token in
    its forms (never the other's), and each token works for its own session."""
    seeded = seed(database_url)
    target = seeded.failed[0]
    async with served(database_url, emulator, console_token=TOKEN, console_actions=True) as app:
        app.app[CONSOLE].pages = SharedPages(ttl=3600)
        tokens, pages = [], []
        for _ in range(2):
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as person:
                async with person.post(f"{app.url}/console/login", data={"token": TOKEN}) as r:
                    assert r.status == 200
                built = _pages("row", "built")
                async with person.get(
                    f"{app.url}/console/row", params={"identifier": target}
                ) as response:
                    page = await response.text()
                pages.append(_pages("row", "built") - built)
                (csrf,) = set(re.findall(r'name="csrf" value="([^"]+)"', page))
                tokens.append(csrf)
                if len(tokens) == 2:  # the second person acts with the token their page showed
                    async with person.post(
                        f"{app.url}/console/row/retry", data={"identifier": target, "csrf": csrf}
                    ) as response:
                        assert "Requeued" in await response.text()
        assert pages == [1, 0]  # the second person got the first one's page
        assert tokens[0] != tokens[1]


async def test_requests_over_the_pace_wait_then_are_refused_with_retry_after(
    database_url: str, emulator: Emulator
) -> None:
    """All clients together: over the pace, a request whose turn is further away than the
    wait is answered 503 with Retry-After at once (here: one a second, no wait)."""
    async with served(database_url, emulator, console_trusted_proxies="127.0.0.0/8") as app:
        app.app[CONSOLE].pacer = Pacer(rate=1, wait=0)
        before = REGISTRY.get_sample_value("outbox_relay_console_busy_total", {"reason": "paced"})
        async with aiohttp.ClientSession() as session:
            first = await _status(session, f"{app.url}/console", "10.0.0.1")
            async with session.get(
                f"{app.url}/console", headers={"X-Forwarded-For": "10.0.0.2"}
            ) as response:
                assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert first == 200
        after = REGISTRY.get_sample_value("outbox_relay_console_busy_total", {"reason": "paced"})
        assert (after or 0) - (before or 0) == 1

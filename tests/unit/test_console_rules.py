"""Pure rules of the console and of /metrics, with an injected clock (no PostgreSQL, no
sockets): session cookies, CSRF and origin checks, the scrape-time refresh."""

from datetime import timedelta
from typing import Any

from aiohttp.test_utils import make_mocked_request
from prometheus_client import REGISTRY

from relay.core import metrics
from relay.server.console.auth import COOKIE, SESSION_SECONDS, Guard

SECRET = "console-rules-secret-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _request(cookie: str | None = None, **headers: str):
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return make_mocked_request("POST", "/console/row/retry", headers={"Host": "h:1", **headers})


def test_session_cookie_is_signed_and_expires() -> None:
    clock = Clock()
    guard = Guard(SECRET, clock=clock)
    cookie, session = guard.new_session()
    assert guard.viewer(_request(cookie)).session_id == session
    forged = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
    assert not guard.viewer(_request(forged)).allowed
    assert not Guard(SECRET[::-1], clock=clock).viewer(_request(cookie)).allowed
    clock.now += SESSION_SECONDS + 1
    assert not guard.viewer(_request(cookie)).allowed


def test_cookie_post_needs_the_sessions_csrf_token_and_same_origin() -> None:
    guard = Guard(SECRET, clock=Clock())
    cookie, _ = guard.new_session()
    viewer = guard.viewer(_request(cookie))
    other = guard.viewer(_request(guard.new_session()[0]))
    assert viewer.csrf and viewer.csrf != other.csrf
    assert guard.may_act(_request(cookie), viewer, viewer.csrf, "http")
    assert guard.may_act(_request(cookie, Origin="http://h:1"), viewer, viewer.csrf, "http")
    assert guard.may_act(_request(cookie, Origin="https://h:1"), viewer, viewer.csrf, "https")
    assert not guard.may_act(_request(cookie), viewer, None, "http")
    assert not guard.may_act(_request(cookie), viewer, other.csrf, "http")
    assert not guard.may_act(_request(cookie, Origin="https://evil"), viewer, viewer.csrf, "http")
    assert not guard.may_act(_request(cookie, Origin="null"), viewer, viewer.csrf, "http")
    cross = _request(cookie, **{"Sec-Fetch-Site": "cross-site"})
    assert not guard.may_act(cross, viewer, viewer.csrf, "http")


def test_the_origin_check_includes_the_scheme() -> None:
    """A plain-HTTP page on the same host and port must not act on the HTTPS console."""
    guard = Guard(SECRET, clock=Clock())
    cookie, _ = guard.new_session()
    viewer = guard.viewer(_request(cookie))
    assert not guard.may_act(_request(cookie, Origin="http://h:1"), viewer, viewer.csrf, "https")
    assert not guard.may_act(_request(cookie, Origin="https://h:1"), viewer, viewer.csrf, "http")


def test_bearer_token_acts_without_csrf_and_no_token_means_read_only() -> None:
    guard = Guard(SECRET)
    bearer = _request(Authorization=f"Bearer {SECRET}")
    assert guard.may_act(bearer, guard.viewer(bearer), None, "http")
    wrong = _request(Authorization=f"Bearer {SECRET[:-1]}X")
    assert not guard.viewer(wrong).allowed
    open_console = Guard(None)
    viewer = open_console.viewer(_request())
    assert viewer.allowed and not viewer.signed_in
    assert not open_console.may_act(_request(), viewer, "", "http")
    assert not open_console.token_matches("")


class Reader:
    """The table as the refresh sees it; `down` makes every read fail."""

    def __init__(self) -> None:
        self.reads = 0
        self.down = False
        self.pending = 3

    async def state_counts(self) -> dict[str, int]:
        if self.down:
            raise OSError("database unreachable")
        self.reads += 1
        return {"pending": self.pending, "failed": 1}

    async def oldest_unsent_age(self) -> timedelta | None:
        return timedelta(seconds=55)

    async def live_relay_count(self) -> int:
        return 2

    async def drift_events(self) -> float:
        return 4.0

    async def held_by_reason(self) -> dict[str, tuple[int, float]]:
        return {"meter_missing": (3, 86_400.0)}

    async def confirmation(self) -> dict[str, Any]:
        return {
            "confirmed": 7,
            "awaiting": 2,
            "drifting": 1,
            "not_confirmable": 0,
            "oldest_unconfirmed_age_seconds": 60.0,
        }


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_scrape_refresh_reuses_a_recent_reading_and_survives_the_database() -> None:
    clock, reader = Clock(), Reader()
    refresh = metrics.ScrapeRefresh(reader, mode="v2-stream", version="9.9", clock=clock)
    await refresh(auth_ok=False)
    assert _value("outbox_relay_backlog_rows", state="pending") == 3
    assert _value("outbox_relay_oldest_unsent_age_seconds") == 55
    assert _value("outbox_relay_live_relays") == 2
    assert _value("outbox_relay_drift_events") == 4
    assert _value("outbox_relay_held_rows", reason="meter_missing") == 3
    assert _value("outbox_relay_held_rows", reason="meter_inactive") == 0
    assert _value("outbox_relay_held_oldest_age_seconds") == 86_400
    assert _value("outbox_relay_account_auth_paused", account="platform") == 1
    assert _value("outbox_relay_build_info", version="9.9", mode="v2-stream") == 1
    reader.pending = 4
    clock.now += refresh.MIN_INTERVAL / 2
    await refresh(auth_ok=True)
    assert reader.reads == 1  # a second scraper within the interval reuses the reading
    assert _value("outbox_relay_account_auth_paused", account="platform") == 0
    clock.now += refresh.MIN_INTERVAL
    reader.down = True
    errors = _value("outbox_relay_database_errors_total") or 0
    await refresh(auth_ok=True)  # no exception: the scrape still answers
    assert _value("outbox_relay_database_errors_total") == errors + 1
    assert _value("outbox_relay_backlog_rows", state="pending") == 3
    reader.down = False
    await refresh(auth_ok=True)  # a failed read is retried at the next scrape
    assert _value("outbox_relay_backlog_rows", state="pending") == 4

"""Wait for work in one place: "notified, or poll timeout, or stop" (procrastinate's shape).

A dedicated connection LISTENs for the writers' coalesced hint. With `--poll-only` (PgBouncer in
transaction pooling mode, where LISTEN does not work) only the poll timer wakes the relay.
"""

import asyncio

import psycopg
import structlog

from outbox.dburl import psycopg_url
from relay.core.retryable import RETRYABLE

CHANNEL = "meter_event_outbox"
log = structlog.get_logger("relay.wakeup")


class Wakeup:
    """An event set by NOTIFY hints and by the relay itself (a lane was freed)."""

    def __init__(self, database_url: str, listen: bool) -> None:
        self._url = psycopg_url(database_url)
        self.listens = listen  # False: only the poll timer and pokes wake the relay
        self._event = asyncio.Event()

    def poke(self) -> None:
        """Wake the producer now (used when outcomes free lanes or capacity)."""
        self._event.set()

    # `timeout` is the poll interval, not a deadline: past it, wait returns normally.
    async def wait(self, timeout: float, stop: asyncio.Event) -> None:  # noqa: ASYNC109
        """Return on a hint, a poke, the stop signal, or after `timeout` seconds."""
        if self._event.is_set() or stop.is_set():
            self._event.clear()
            return
        waiters = [asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._event.clear()

    async def listen(self) -> None:
        """The listener service: LISTEN, reconnecting with backoff, until cancelled. A missed
        hint only costs one poll interval."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    self._event.set()  # catch up on anything committed while we were away
                    async for _ in conn.notifies():
                        self._event.set()
            except RETRYABLE as err:
                log.warning("listen_connection_lost", error=str(err), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

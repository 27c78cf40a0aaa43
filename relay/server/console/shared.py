"""One reading of the console's overview shared by every viewer for a few seconds, each page
built once per few seconds for all its viewers with a cap on pages built at once, a pace for
the console's requests of all clients together, and a cap on how many console requests one
client may have running at once.

However many people (or scripts) open the overview, the database sees at most one set of its
statements per TTL: the first request loads, requests arriving meanwhile wait for that load,
and later ones reuse it until it is TTL seconds old.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
TTL = 3.0
PER_CLIENT = 4  # console requests one address may have running at once


class SharedReading(Generic[T]):
    """A value loaded at most once per `ttl` seconds, whoever asks (injected clock)."""

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: T | None = None
        self._loaded_at = -float("inf")

    async def get(self, load: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            if self._value is None or self._clock() - self._loaded_at >= self.ttl:
                self._value = await load()
                self._loaded_at = self._clock()
            return self._value


class ClientLimit:
    """Counts running requests per client; `enter` is False when the client is at its cap."""

    def __init__(self, cap: int = PER_CLIENT) -> None:
        self.cap = cap
        self._running: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        running = self._running.get(client, 0)
        if running >= self.cap:
            return False
        self._running[client] = running + 1
        return True

    def leave(self, client: str) -> None:
        running = self._running.get(client, 1) - 1
        if running > 0:
            self._running[client] = running
        else:
            self._running.pop(client, None)


RATE = 20.0  # console requests started per second, all clients together
PACE_WAIT = 5.0  # seconds a request may be held back before it is refused (503) instead


class Pacer:
    """Spaces the console's requests at least 1/`rate` seconds apart, all clients together.

    Why: even a shared page costs the relay's event loop about a millisecond to answer, so
    clients asking nonstop would still take most of the loop that sends rows. People need a
    page every few seconds each; 20 a second serves dozens of them. A request over the rate
    waits its turn (a sleeping coroutine costs nothing); one whose turn is more than `wait`
    seconds away is refused at once (503 with Retry-After). The clock is injected for tests.
    """

    def __init__(
        self,
        rate: float = RATE,
        wait: float = PACE_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gap = 1.0 / rate
        self.wait = wait
        self._clock = clock
        self._next = -float("inf")

    def turn(self) -> float | None:
        """Seconds this request waits before it starts (0: at once), or None: refused."""
        now = self._clock()
        start = max(now, self._next)
        if start - now > self.wait:
            return None
        self._next = start + self.gap
        return start - now


BUILDING = 2  # console pages built (read and rendered) at once, all clients together
BUILD_WAIT = 5.0  # seconds a request waits for a building slot before 503
PAGES_KEPT = 64  # pages kept for reuse (least recently used forgotten first)


class Busy(Exception):
    """No building slot came free in time: the request is answered 503 with Retry-After."""


@dataclass(frozen=True)
class Page:
    """A rendered page as every viewer of its kind gets it (their CSRF token added later)."""

    body: str
    status: int


class SharedPages:
    """Each page (a key: its path, query and kind of viewer) built at most once per `ttl`
    seconds however many clients ask, and at most `building` pages built at once.

    Why: the console is served by the relay's own process, whose event loop also sends the
    rows. Reading and rendering a page costs milliseconds of that loop; twenty clients asking
    nonstop would otherwise cost it most of its time. A request for a page being built waits
    for that build; a request for a fresh page reuses it; a request that finds every building
    slot taken waits up to `wait` seconds, then gets Busy (503).
    """

    def __init__(
        self,
        ttl: float = TTL,
        building: int = BUILDING,
        wait: float = BUILD_WAIT,
        kept: int = PAGES_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.wait = wait
        self._kept = kept
        self._clock = clock
        self._slots = asyncio.Semaphore(building)
        self._pages: OrderedDict[Hashable, tuple[float, Page]] = OrderedDict()
        self._building: dict[Hashable, asyncio.Future[Page]] = {}

    async def get(self, key: Hashable, build: Callable[[], Awaitable[Page]]) -> tuple[Page, bool]:
        """The page for `key` and whether this request built it (False: shared)."""
        kept = self._pages.get(key)
        if kept is not None and self._clock() - kept[0] < self.ttl:
            self._pages.move_to_end(key)
            return kept[1], False
        under_way = self._building.get(key)
        if under_way is not None:
            return await asyncio.shield(under_way), False
        return await self._build(key, build), True

    def forget(self) -> None:
        """Drop every kept page (after an action changed rows: the next view reads again)."""
        self._pages.clear()

    async def _build(self, key: Hashable, build: Callable[[], Awaitable[Page]]) -> Page:
        future: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_seen)
        self._building[key] = future
        try:
            try:
                async with asyncio.timeout(self.wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise Busy from None
            try:
                page = await build()
            finally:
                self._slots.release()
            self._keep(key, page)
            future.set_result(page)
            return page
        except BaseException as err:  # the waiters get the same answer (a cancel: Busy)
            if not future.done():
                future.set_exception(err if isinstance(err, Exception) else Busy())
            raise
        finally:
            self._building.pop(key, None)

    def _keep(self, key: Hashable, page: Page) -> None:
        self._pages[key] = (self._clock(), page)
        self._pages.move_to_end(key)
        while len(self._pages) > self._kept:
            self._pages.popitem(last=False)


def _seen(future: "asyncio.Future[Page]") -> None:
    """Mark a failed build's error retrieved (nobody may have waited for it)."""
    if not future.cancelled():
        future.exception()

"""One reading of the console's overview shared by every viewer for a few seconds, and a cap
on how many console requests one client may have running at once.

However many people (or scripts) open the overview, the database sees at most one set of its
statements per TTL: the first request loads, requests arriving meanwhile wait for that load,
and later ones reuse it until it is TTL seconds old.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
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

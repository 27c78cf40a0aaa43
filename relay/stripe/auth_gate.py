"""Pauses on 401/403: per cause and per account, probed with the rows that failed.

A 401 says the API key itself is refused: every account's rows wait. A 403 says the key may not
act for one (connected) account, or a restricted key lacks a permission there: only that
account's rows wait, the other accounts keep sending. No side call can test what failed (a
meter list succeeds for a restricted key that cannot write meter events, and a meter event for
a made-up identifier would bill), so the probe is one of the paused rows itself: one row of the
paused scope is let through per backoff interval (it goes through the rate limiter like any
call), the interval doubling up to a cap while the refusals go on. The other rows are put back
pending, without a call and without using up an attempt, with a code `status` shows
(`api_key_refused`, `account_access_refused`). One log line per change of state, none per row.

Only the relay's liveness loop is untouched: the producer keeps turning, so `/healthz` and the
systemd watchdog stay healthy; `/readyz` fails while the key (or the platform account) is
refused.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from relay.core import metrics
from relay.core.rows import Claimed
from relay.core.vocabulary import ACCOUNT_REFUSED, KEY_REFUSED, RelayCode
from relay.stripe.classify import Classified, Verdict

log = structlog.get_logger("relay")

Scope = tuple[str, str | None]  # ("key", None) or ("account", the Stripe-Account or None)
KEY: Scope = ("key", None)


@dataclass
class Pause:
    code: RelayCode
    interval: float  # current backoff between probes
    probe_at: float  # monotonic time the next probe row may go
    probe: int | None = None  # id of the row out as the probe


class AuthGate:
    """Which rows may be sent while some scope is refused, and when the others retry."""

    def __init__(
        self,
        on_ready: Callable[[bool], None],
        interval: float,
        cap: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_ready = on_ready
        self._base = interval
        self._cap = max(cap, interval)
        self._clock = clock
        self.paused: dict[Scope, Pause] = {}

    def admit(self, row: Claimed) -> float | None:
        """None: send `row` (nothing paused, or it is the scope's probe); otherwise the
        seconds it waits (pending, no call)."""
        pause = self.paused.get(KEY) or self.paused.get(("account", row.stripe_account))
        if pause is None:
            return None
        now = self._clock()
        if pause.probe is None and now >= pause.probe_at:
            pause.probe = row.id
            return None
        return max(pause.probe_at - now, pause.interval)

    def code_for(self, row: Claimed) -> RelayCode:
        return KEY_REFUSED if KEY in self.paused else ACCOUNT_REFUSED

    def settle(self, row: Claimed, result: Classified) -> float | None:
        """After a call: pause on a refusal, resume when a probe got through. Returns how
        long a refused row waits (None when it was not refused)."""
        scope = _scope(row, result) if result.verdict is Verdict.AUTH else None
        for s, pause in list(self.paused.items()):
            if pause.probe == row.id:
                pause.probe = None
                if scope == s:  # still refused: back off
                    pause.interval = min(self._cap, pause.interval * 2)
                    pause.probe_at = self._clock() + pause.interval
                else:  # got past this scope's refusal (an account's 403 clears a 401)
                    self._resume(s)
        if scope is None:
            return None
        held = self.paused.get(scope) or self._pause(scope, result)
        return max(held.probe_at - self._clock(), 0.0) + 0.1

    def release(self, row: Claimed) -> None:
        """The row's call never happened (shutdown, crash): another row may probe."""
        for pause in self.paused.values():
            if pause.probe == row.id:
                pause.probe = None

    def _pause(self, scope: Scope, result: Classified) -> Pause:
        code = KEY_REFUSED if scope == KEY else ACCOUNT_REFUSED
        pause = Pause(code, self._base, self._clock() + self._base)
        self.paused[scope] = pause
        self._changed()
        log.error(
            "stripe_auth_paused",
            scope=scope[0],
            stripe_account=scope[1],
            code=code,
            stripe_code=result.code,
            message=result.message,
            action="rows of this scope stay pending; one is retried per backoff interval",
        )
        return pause

    def _resume(self, scope: Scope) -> None:
        del self.paused[scope]
        self._changed()
        log.info("stripe_auth_restored", scope=scope[0], stripe_account=scope[1])

    def _changed(self) -> None:
        metrics.AUTH_PAUSED.set(len(self.paused))
        self._on_ready(KEY not in self.paused and ("account", None) not in self.paused)


def _scope(row: Claimed, result: Classified) -> Scope:
    """401: the key; 403: the account the call acted for."""
    return KEY if result.http_status == 401 else ("account", row.stripe_account)

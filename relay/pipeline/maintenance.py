"""Maintenance services: small periodic duties beside the send path.

- `fold_counts`: fold the status counters (see outbox_fold_counts()), so `status` reads a few
  rows, never the history.
- `heartbeat`: keep this relay's share of the account's rate limit (see
  relay/stripe/rate_share.py). It runs until the relay has drained: the relay sends until then.
- `outage_watch`: follow the shared outage breaker (see relay/stripe/outage.py).

Each runs until cancelled; a statement the database failed (relay.core.retryable) is logged and
retried at the next turn, any other error ends the service and so the relay.
"""

import asyncio

import structlog

from relay.core.retryable import RETRYABLE
from relay.db.store import Store
from relay.pipeline.executor import RelayState
from relay.stripe.outage import OutageBreaker
from relay.stripe.rate_share import RateShare

log = structlog.get_logger("relay")


async def fold_counts(store: Store, interval: float, state: RelayState) -> None:
    """Paused while the database is read-only (the database watch says so, once)."""
    while True:
        await asyncio.sleep(interval)
        if state.read_only_since is not None:
            continue
        try:
            await store.fold_counts()
        except RETRYABLE as err:
            # A fold that started before the database turned read-only fails after the watch
            # said so: said once is enough.
            if state.read_only_since is None:
                log.warning("fold_counts_failed", error=str(err))


async def heartbeat(share: RateShare, interval: float) -> None:
    """`share.beat()` handles its own failures (it fences the relay)."""
    while True:
        await asyncio.sleep(interval)
        await share.beat()


async def outage_watch(breaker: OutageBreaker, interval: float) -> None:
    """`breaker.sync()` handles its own failures (the relay then acts on its own calls)."""
    while True:
        await asyncio.sleep(interval)
        await breaker.sync()

"""The errors a long-running service waits out: those of the resource it waits on.

The error contract (docs/design.md, "Errors: who retries what"): a service retries only these
(the database went away, its pool ran dry, a socket failed); the Stripe side retries what
relay.stripe.classify classifies. Anything else is a bug: it reaches the supervisor
(`service_died`), the relay drains, and the process exits 1 for its own supervisor to restart.
Kept apart from relay.core.errors so the CLI does not import psycopg to start.
"""

from typing import Final

import psycopg
import psycopg_pool

RETRYABLE: Final[tuple[type[Exception], ...]] = (
    psycopg.Error,  # connection lost, server shutting down, serialization failures, ...
    psycopg_pool.PoolTimeout,  # no connection within the pool's timeout (the database is slow)
    OSError,  # sockets, TimeoutError included
)

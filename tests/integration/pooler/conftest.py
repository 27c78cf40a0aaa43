"""A PgBouncer per pool mode for this folder's tests (tests/support/pgbouncer.py)."""

from collections.abc import Iterator

import pytest

from tests.support.pgbouncer import Bouncer, bouncer


@pytest.fixture(scope="module", params=["transaction", "session"])
def pgbouncer(request: pytest.FixtureRequest, pg_admin_url: str) -> Iterator[Bouncer]:
    with bouncer(pg_admin_url, request.param) as running:
        yield running


@pytest.fixture(scope="module")
def transaction_bouncer(pg_admin_url: str) -> Iterator[Bouncer]:
    """Transaction pooling with one server connection: every client shares it."""
    with bouncer(pg_admin_url, "transaction", pool_size=1) as running:
        yield running

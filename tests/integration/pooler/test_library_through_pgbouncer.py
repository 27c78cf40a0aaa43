"""`record_usage` through PgBouncer in transaction pooling, from several application
connections sharing one server connection: with psycopg's `prepare_threshold=None` (what
docs/operations.md tells the caller to set, for psycopg and for SQLAlchemy) every call works;
with psycopg's default a statement run five times gets prepared on a server connection the next
transaction may not have, the failure the documented setting exists for."""

import psycopg
import pytest
from sqlalchemy import create_engine

import outbox
from tests.support.pgbouncer import Bouncer

CALLS = 60


def _record(conn: object, n: int, prefix: str) -> None:
    outbox.record_usage(
        conn, event_name="api_calls", customer="cus_1", value=1, identifier=f"{prefix}{n}"
    )


def _interleaved(url: str, prepare_threshold: int | None, prefix: str) -> None:
    conns = [psycopg.connect(url, prepare_threshold=prepare_threshold) for _ in range(3)]
    try:
        for n in range(CALLS):
            conn = conns[n % len(conns)]
            with conn.transaction():
                _record(conn, n, prefix)
    finally:
        for conn in conns:
            conn.close()


def _count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM meter_event_outbox").fetchone() or (0,)
        return int(n)


def test_psycopg_without_prepares_works_through_transaction_pooling(
    database_url: str, transaction_bouncer: Bouncer
) -> None:
    _interleaved(transaction_bouncer.url(database_url), None, "p")
    assert _count(database_url) == CALLS


def test_sqlalchemy_without_prepares_works_through_transaction_pooling(
    database_url: str, transaction_bouncer: Bouncer
) -> None:
    url = transaction_bouncer.url(database_url).replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=3)
    try:
        for n in range(CALLS):
            with engine.begin() as conn:
                _record(conn, n, "s")
    finally:
        engine.dispose()
    assert _count(database_url) == CALLS


def test_psycopg_default_prepares_fail_through_transaction_pooling(
    database_url: str, transaction_bouncer: Bouncer
) -> None:
    with pytest.raises(psycopg.errors.Error, match="prepared statement"):
        _interleaved(transaction_bouncer.url(database_url), 5, "d")

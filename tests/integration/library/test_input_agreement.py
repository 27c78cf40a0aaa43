"""Property test (invariant 11): record_usage, the SQL function outbox_record_usage() and a
plain INSERT accept and refuse the same generated facts; record_usage refuses only with
InvalidUsage and never leaves the caller's transaction aborted. Bounded for CI; the long run is
bench/fuzz_inputs.py."""

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings

from bench.usage_inputs import ACCEPTED, FACTS, REFUSED, Fact, judge
from outbox import rules


@pytest.fixture
def conn(database_url: str):
    with psycopg.connect(database_url) as conn:
        yield conn


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fact=FACTS)
@example(fact=Fact("api_calls", "cus_1", "١٢", "i", None, None, None, None))
@example(fact=Fact("api_calls", "cus_1", "1_000", "i", None, None, None, None))
@example(fact=Fact("api_calls", "cus_1", 1, "i", None, {"": "x"}, None, None))
@example(fact=Fact("api_calls", "cus_1", 1, "i", None, {"a": "\x00"}, None, None))
@example(fact=Fact("api_calls", "cus_1", 1, "i", None, None, {"\ud800": 1}, None))
@example(fact=Fact("api_calls", "cus_1", 1, "i", None, None, {"p": "x" * 2**20}, None))
@example(fact=Fact("api_calls", "cus_1", 1, "i", rules.MAX_FUTURE * 2, None, None, None))
def test_three_ways_agree(fact: Fact, conn: psycopg.Connection) -> None:
    verdicts = judge(conn, fact)
    if "_" in str(fact.value) and conn.info.server_version >= 160000:
        # PostgreSQL 16 reads "1_000" as 1000; Python refuses it (no other writer reads it so)
        assert verdicts.library == REFUSED
        return
    assert verdicts.crashes == [], verdicts
    assert verdicts.agree, verdicts
    assert verdicts.library in (ACCEPTED, REFUSED)

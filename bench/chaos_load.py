"""The application side of a chaos run: writers that commit usage facts in real
transactions (a business row plus `outbox.record_usage`), roll a few back, cancel a few right
after commit, and ride out PostgreSQL crashes by retrying the same fact.

A commit interrupted by a crash has an unknown outcome; retrying it under the same identifier
is safe by design (a replay of a recorded fact is a no-op), which is exactly what an
application's job queue would do.
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

import outbox

EVENT_NAME = "api_calls"
CONNECT_TIMEOUT_S = 5
ROLLBACK_SUFFIX = "-rb"

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_orders (
    identifier text PRIMARY KEY,
    customer   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

# Rows whose last call may have reached Stripe without an answer (a timeout or a cut
# connection), or whose call is in flight right now: cancelling them races the original event.
UNKNOWN_OUTCOMES = """
SELECT o.identifier FROM meter_event_outbox o
WHERE o.action = 'report' AND o.cancel_requested_at IS NULL
  AND (o.state = 'in_flight' OR (o.state = 'pending' AND o.last_error_code = 'connection_error')
       -- in flight: pending with a live lease (migration outbox_0020)
       OR (o.state = 'pending' AND EXISTS (
           SELECT 1 FROM meter_event_outbox_leases l
           WHERE l.outbox_id = o.id AND l.leased_until > now())))
ORDER BY o.updated_at DESC
LIMIT %s
"""


@dataclass(frozen=True)
class WriterPlan:
    """One writer process's share of the facts."""

    url: str
    prefix: str
    writer: int
    count: int
    rate: float  # facts/s of this writer
    customers: int
    cancel_fraction: float
    rollback_fraction: float
    seed: int
    deadline: float  # time.time() after which the writer gives up


@dataclass
class WriterResult:
    committed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    reconnects: int = 0
    last_commit: float = 0.0
    gave_up: str | None = None


class Session:
    """One application connection that reconnects after the database went away."""

    def __init__(self, url: str, deadline: float, result: WriterResult) -> None:
        self.url = url
        self.deadline = deadline
        self.result = result
        self.conn: psycopg.Connection | None = None

    def run(self, work: Callable[[psycopg.Connection], None]) -> None:
        """Run `work` in one transaction until it commits (or the deadline passes)."""
        pause = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
                with self.conn.transaction():
                    work(self.conn)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._drop()
                self.result.reconnects += 1
                if time.time() + pause > self.deadline:
                    raise
                time.sleep(pause)
                pause = min(2.0, pause * 2)

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def close(self) -> None:
        self._drop()


def _record(identifier: str, customer: str, value: int, writer: int):
    def work(conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO chaos_orders (identifier, customer) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (identifier, customer),
        )
        outbox.record_usage(
            conn,
            event_name=EVENT_NAME,
            customer=customer,
            value=value,
            identifier=identifier,
            metadata={"writer": writer},
        )

    return work


def _rolled_back(work: Callable[[psycopg.Connection], None]):
    def rolled_back(conn: psycopg.Connection) -> None:
        work(conn)
        raise psycopg.Rollback()  # a failed business transaction: its usage must vanish

    return rolled_back


def _cancel(identifier: str):
    def work(conn: psycopg.Connection) -> None:
        outbox.cancel_usage(conn, identifier=identifier)

    return work


def write_facts(plan: WriterPlan, on_commit: Callable[[], None] = lambda: None) -> WriterResult:
    """Commit `plan.count` facts paced at `plan.rate` (runs in its own process), plus a few
    rolled-back ones; `on_commit` is called after each commit (the director's progress clock)."""
    rng = random.Random(plan.seed)
    result = WriterResult()
    session = Session(plan.url, plan.deadline, result)
    started = time.time()
    try:
        for i in range(plan.count):
            pause = started + i / plan.rate - time.time()
            if pause > 0:
                time.sleep(pause)
            identifier = f"{plan.prefix}-w{plan.writer}-{i}"
            customer = f"cus_chaos{rng.randrange(plan.customers):05d}"
            if rng.random() < plan.rollback_fraction:  # on top of the `count` committed
                rolled_back = identifier + ROLLBACK_SUFFIX
                session.run(_rolled_back(_record(rolled_back, customer, 1, plan.writer)))
                result.rolled_back.append(rolled_back)
            session.run(_record(identifier, customer, rng.randint(1, 9), plan.writer))
            result.committed.append(identifier)
            result.last_commit = time.time()
            on_commit()
            if rng.random() < plan.cancel_fraction:
                session.run(_cancel(identifier))
                result.cancelled.append(identifier)
    except psycopg.Error as exc:
        result.gave_up = f"{type(exc).__name__}: {exc}"
    finally:
        session.close()
    return result


def cancel_unknown_outcomes(url: str, limit: int, cancelled: list[str]) -> None:
    """Cancel up to `limit` facts whose call is in flight or timed out, appending each to
    `cancelled` once its transaction committed (a commit cut by a crash is left out here; the
    verdict reads the cancellations from the database anyway)."""
    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        identifiers = [row[0] for row in conn.execute(UNKNOWN_OUTCOMES, (limit,))]
        conn.commit()
        for identifier in identifiers:
            with conn.transaction():
                outbox.cancel_usage(conn, identifier=identifier)
            cancelled.append(identifier)

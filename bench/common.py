"""Shared scaffolding for the benchmarks: scratch databases, emulator and relay processes.

Benchmarks print tables and never assert timings; run them on an otherwise idle machine and
read medians. Everything runs on 127.0.0.1.
"""

import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import psycopg

from outbox.dburl import psycopg_url, with_database
from relay.db import migrate

ADMIN_URL = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_execute(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@contextlib.contextmanager
def scratch_database(
    admin_url: str = ADMIN_URL, migrated: bool = True, setup_sql: str | None = None
) -> Iterator[str]:
    """A fresh database (migrated, then `setup_sql`), dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        if migrated:
            migrate.upgrade(url)
        if setup_sql:
            admin_execute(url, setup_sql)
        yield url
    finally:
        admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def kept_database(name: str, admin_url: str = ADMIN_URL) -> Iterator[tuple[str, bool]]:
    """Database `name`, created and migrated if missing and kept afterwards: a seed that takes
    minutes is made once and read by later runs. Yields its URL and whether it was already
    seeded (a run marks it seeded with `mark_seeded` once its seed is complete)."""
    with psycopg.connect(psycopg_url(admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if not exists:
        admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    migrate.upgrade(url)
    with psycopg.connect(psycopg_url(url)) as conn:
        seeded = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') = 'seeded' FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    yield url, bool(seeded and seeded[0])


def mark_seeded(url: str) -> None:
    """Mark the database a complete seed, for `kept_database`'s next caller."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        conn.execute(f"COMMENT ON DATABASE \"{name[0] if name else ''}\" IS 'seeded'")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu_seconds(url: str) -> dict[int, float]:
    """CPU seconds per backend serving `url`'s database (pg_stat_activity + /proc).

    The server is shared, so only this database's backends count; its background processes
    (WAL writer, checkpointer, autovacuum) are not included. Call it while the connections
    under test are still open: a backend's CPU is gone from /proc once it exits.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            seconds[pid] = cpu_seconds(pid)
    return seconds


def postgres_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the database's backends used between two samples (new backends count in full)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class Emulator(NamedTuple):
    url: str
    pid: int


@contextlib.contextmanager
def emulator_process(*args: str, core: int | None = 1) -> Iterator[Emulator]:
    """The emulator in its own process (pinned to one core when possible)."""
    port = free_port()
    cmd = [sys.executable, "-m", "relay.emulator", "--port", str(port), *args]
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 0) > 1:
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Emulator(f"http://127.0.0.1:{port}", proc.pid)  # taskset execs: same pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def relay_process(
    database_url: str, api_base: str, cwd: str | None = None, **env: str
) -> Iterator[subprocess.Popen]:
    """`outbox-relay run` as a separate process, yielded once its HTTP port answers (started
    up, imports done), stopped with SIGTERM. `cwd`: run another checkout's relay (`-m` puts the
    working directory first on the path, before PYTHONPATH)."""
    http_port = free_port()
    full_env = {
        **os.environ,
        "OUTBOX_DATABASE_URL": database_url,
        "OUTBOX_STRIPE_API_BASE": api_base,
        "STRIPE_API_KEY": env.pop("STRIPE_API_KEY", "sk_test_bench"),
        "OUTBOX_HTTP_PORT": str(http_port),
        "OUTBOX_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "run"],
        env=full_env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(http_port, timeout=60)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def burning_core(seconds: float = 1800.0) -> Iterator[int]:
    """Another process spinning on one core (a bounded busy loop), killed on exit."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def insert_rows(url: str, n: int, customers: int, prefix: str = "r") -> None:
    """n pending rows spread over `customers` customers, in one statement."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
            " SELECT %s || g, 'api_calls', 'cus_' || (g %% %s), 1"
            " FROM generate_series(1, %s) g",
            (prefix, customers, n),
        )
        conn.execute("ANALYZE meter_event_outbox")  # as autovacuum would have by now
        conn.execute("NOTIFY meter_event_outbox")  # a running relay's wake-up hint


# Anything left to send? The first entry of the due index, in the words of its predicate:
# since outbox_0031 (DRAIN_PROBE) its own, without which the planner can read every unsent row
# through the lane index and sort them; before it (a checkout compared with --trees), the lane
# index's (EARLIER_DRAIN_PROBE).
DRAIN_PROBE = (
    "SELECT 1 FROM meter_event_outbox WHERE (state IN ('pending', 'in_flight')) IS TRUE"
    " AND (isfinite(available_at) OR NOT isfinite(available_at)) ORDER BY available_at LIMIT 1"
)
EARLIER_DRAIN_PROBE = (
    "SELECT 1 FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"
    " ORDER BY available_at LIMIT 1"
)


def drain_probe(conn: psycopg.Connection[Any]) -> str:
    """The drain probe in the words of this database's due index."""
    own = conn.execute(
        "SELECT pg_get_indexdef(c.oid) LIKE '%IS TRUE%' FROM pg_class c"
        " WHERE c.relname = 'meter_event_outbox_due'"
        " AND c.relnamespace = current_schema()::regnamespace"
    ).fetchone()
    return DRAIN_PROBE if own and own[0] else EARLIER_DRAIN_PROBE


def wait_drained(url: str, timeout: float) -> None:
    """Poll until nothing is pending or in flight: one ordered probe of the due index.
    Counting the pending rows 10 times a second would take CPU from the relay being measured,
    and so did `EXISTS (... WHERE state IN ('pending', 'in_flight'))`: planned as a sequential
    scan that reads past the rows sent so far, it took 3.6 ms a poll in (c) and 7.6 ms in (e)
    (pg_stat_statements), 3-5 us per row of their "PostgreSQL CPU"."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        probe = drain_probe(conn)
        while time.monotonic() < deadline:
            busy = conn.execute(probe).fetchone()  # type: ignore[arg-type]
            if busy is None:
                return
            time.sleep(0.1)
    raise TimeoutError("relay did not drain the outbox in time")


def sustained_rate(url: str, prefix: str = "") -> float:
    """Rows/s between the 10th and 90th percentile of acceptance times (skips warm-up/tail);
    only rows whose identifier starts with `prefix` (one run's rows, in a table with history)."""
    with psycopg.connect(url) as conn:
        stamps = [
            r[0]
            for r in conn.execute(
                "SELECT accepted_at FROM meter_event_outbox WHERE accepted_at IS NOT NULL"
                " AND starts_with(identifier, %s) ORDER BY accepted_at",
                (prefix,),
            )
        ]
    return rate_between(stamps)


def rate_between(stamps: list[datetime], low: float = 0.1, high: float = 0.9) -> float:
    if len(stamps) < 10:
        return 0.0
    a, b = int(len(stamps) * low), int(len(stamps) * high)
    seconds = (stamps[b] - stamps[a]).total_seconds()
    return (b - a) / seconds if seconds > 0 else float("inf")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a plain Markdown table (pastes into issues and READMEs as is)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(v) for v in row) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def run_in_tree(
    script: str, tree: str, payload: list[Any], what: str, timeout: float = 3600
) -> dict[str, Any]:
    """`script --child <payload>` with checkout `tree` first on PYTHONPATH (its migrations, its
    queries, its store): a bench's side of one checkout. Returns the JSON object of the child's
    last line of output; a failed child ends the bench with its error (`what` names it).
    Import it where the parent runs, not at a module's top: the child imports the bench's modules
    from `tree`, whose bench/common.py may predate it."""
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [sys.executable, script, "--child", json.dumps(payload)]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child for {tree} {what} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))

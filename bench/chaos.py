"""Chaos run: nothing lost, nothing counted twice, at scale, under every fault at once.

Run from the repository root (as root or the postgres user: it creates a PostgreSQL cluster):

    python -m bench.chaos              # 100,000 facts per mode, v1 then v2-stream
    python -m bench.chaos --quick      # 5,000 facts per mode, 20 s outage (about 10 minutes)
    python -m bench.chaos --mode v1 --facts 20000 --outage 60

Per mode, on 127.0.0.1 only: a fresh database on a private PostgreSQL cluster (created on a
free port, removed at the end), migrated with `outbox-relay migrate`; the Stripe emulator
(`outbox-relay emulator`, live rate limit 1,000/s) with 5% 5xx (500/502/503), 2% 429, 1%
connection resets and 1% processed-then-dropped on the meter-event paths; three `outbox-relay
run` replicas; writer processes committing facts with `outbox.record_usage` in real
transactions over many customers (some rolled back, some cancelled right after commit).
During the run: SIGKILLs of random replicas (each restarted), a PostgreSQL crash stop and a
fast restart, a Stripe outage longer than the relay's backoff cap, and slow-Stripe windows in
which calls time out and facts whose outcome is unknown are cancelled (racing the original
event). Then it waits for the drain and compares the outbox with the emulator's ledger.

Prints one Markdown table (a row per mode). Exit code 0 only when nothing was lost, counted
twice, failed, cancelled-but-counted, counted without being committed, or left undrained.
"""

import argparse
import heapq
import itertools
import json
import math
import multiprocessing as mp
import queue
import signal
import subprocess
import tempfile
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from bench.chaos_cluster import PrivateCluster, private_cluster
from bench.chaos_load import SCHEMA, WriterPlan, WriterResult, cancel_unknown_outcomes, write_facts
from bench.chaos_plan import (
    RATE_429,
    SEND_PATH,
    Plan,
    backoff_cap,
    base_faults,
    make_plan,
    slow_faults,
)
from bench.chaos_stack import EmulatorAdmin, Replicas, emulator, outbox_relay
from bench.chaos_verdict import OutboxRow, Verdict, judge
from bench.common import table

MODES = ("v1", "v2-stream")
STRIPE_RATE_LIMIT = 1000
TICK_S = 0.2
PROGRESS_EVERY_S = 15.0
DEFER_S = 2.0
SAMPLES = 3
ADMIN_ERRORS = (OSError, urllib.error.URLError, ValueError)
ROWS = """
SELECT identifier, state, action, cancel_requested_at IS NOT NULL, last_error_code
FROM meter_event_outbox
"""


@dataclass(frozen=True)
class Options:
    facts: int
    rate: float
    writers: int
    customers: int
    outage_s: float
    kills: int
    slow_s: float
    request_timeout: float
    cancel_fraction: float
    race_fraction: float
    rollback_fraction: float
    drain_timeout: float
    seed: int
    log_dir: Path
    modes: tuple[str, ...] = MODES


@dataclass
class ModeResult:
    mode: str
    verdict: Verdict
    drain_s: float | None
    run_s: float
    chaos: dict[str, Any] = field(default_factory=dict)


class Writers:
    """The writer processes of one mode, the facts committed so far (shared counter) and
    their results (collected as they finish)."""

    def __init__(self, plans: list[WriterPlan]) -> None:
        self.results: list[WriterResult] = []
        self.queue: mp.Queue = mp.Queue()
        self.committed = mp.Value("q", 0)
        self.finished = False
        self.procs = [
            mp.Process(target=_write, args=(p, self.queue, self.committed)) for p in plans
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def done(self) -> bool:
        """Collect finished results; True when every writer has reported or exited."""
        if self.finished:
            return True
        exited = all(not proc.is_alive() for proc in self.procs)
        while len(self.results) < len(self.procs):
            try:  # an exited writer's result may still be in the pipe
                self.results.append(self.queue.get(timeout=1.0 if exited else 0))
            except queue.Empty:
                break
        self.finished = exited or len(self.results) == len(self.procs)
        return self.finished

    @property
    def crashed(self) -> int:
        """Writers that exited without a result (an exception the writer does not expect)."""
        return len(self.procs) - len(self.results)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)


def _write(plan: WriterPlan, results: mp.Queue, committed: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when writers stop

    def count() -> None:
        with committed.get_lock():
            committed.value += 1

    results.put(write_facts(plan, count))


class Deferred(Exception):
    """A fault that cannot run now (it would cancel another one): tried again shortly."""


class Director:
    """Plays a plan against the running system from one thread: each tick runs the faults
    due on the progress clock and their follow-ups due on the wall clock, restarts replicas
    that exited, queues the 429s and races cancels."""

    def __init__(
        self,
        plan: Plan,
        opts: Options,
        mode: str,
        cluster: PrivateCluster,
        url: str,
        admin: EmulatorAdmin,
        replicas: Replicas,
        writers: Writers,
    ) -> None:
        self.plan, self.opts, self.mode, self.writers = plan, opts, mode, writers
        self.cluster, self.url, self.admin, self.replicas = cluster, url, admin, replicas
        self.t0 = time.monotonic()
        self.progress_s = 0.0
        self.writing_done_at: float | None = None
        self.chaos_over_at = 0.0
        self.racing_cancels: list[str] = []
        self.done: Counter[str] = Counter()
        self.outage_end = -1.0
        self.slow_until = -1.0
        self.next_race = math.inf
        self.requests_seen = 0
        self.carry_429 = 0.0
        self.queued_429 = 0
        self.database_ops = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg")
        self.database_down = False
        self.follow_ups: list[tuple[float, int, str]] = []  # (wall time due, order, kind)
        self.order = itertools.count()
        self.deferred: set[str] = set()
        ticks = max(1.0, plan.slow_s - opts.request_timeout - 0.5)
        self.race_per_tick = max(1, math.ceil(opts.facts * opts.race_fraction / (3 * ticks)))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.mode} t={self.now():6.1f}s p={self.progress_s:6.1f}s] {text}", flush=True)

    def progress(self, finished: bool) -> float:
        """The progress clock: committed facts / nominal rate, wall time after writing."""
        if finished and self.writing_done_at is None:
            self.writing_done_at = self.now()
            self.progress_s = max(self.progress_s, self.plan.writing_s)
        if self.writing_done_at is None:
            clock = self.writers.committed.value / self.opts.rate
        else:
            clock = self.plan.writing_s + self.now() - self.writing_done_at
        self.progress_s = max(self.progress_s, clock)
        return self.progress_s

    def play(self, hard_stop_s: float) -> None:
        """Run the plan and its follow-ups, until the writers are done (at most `hard_stop_s`
        wall seconds)."""
        faults = list(self.plan.events)
        next_429 = next_report = 0.0
        while self.now() < hard_stop_s:
            finished = self.writers.done()
            progress = self.progress(finished)
            while faults and faults[0].at <= progress:
                event = faults.pop(0)
                self._do(event.kind)
                for delay, kind in event.then:
                    self.later(delay, kind)
            while self.follow_ups and self.follow_ups[0][0] <= self.now():
                self._do(heapq.heappop(self.follow_ups)[2])
            self.replicas.revive_exited()
            if self.now() >= next_429:
                self._queue_429s()
                next_429 = self.now() + 0.5
            if self.now() >= self.next_race:
                self._race()
            if self.now() >= next_report:
                self.report()
                next_report = self.now() + PROGRESS_EVERY_S
            if finished and not faults and not self.follow_ups:
                break
            time.sleep(TICK_S)
        else:
            self.say("chaos phase hit its time cap")
        self.database_ops.shutdown(wait=True)

    def later(self, delay: float, kind: str) -> None:
        heapq.heappush(self.follow_ups, (self.now() + delay, next(self.order), kind))

    def _do(self, kind: str) -> None:
        if kind.startswith("pg_"):
            # pg_ctlcluster waits for crash recovery: off the tick thread, in plan order.
            self.database_ops.submit(self._run, kind)
        else:
            self._run(kind)

    def _run(self, kind: str) -> None:
        action = {
            "kill": self._kill,
            "revive": self.replicas.revive_killed,
            "pg_crash": self._pg_crash,
            "pg_start": self._pg_start,
            "pg_restart": self._pg_restart,
            "outage": self._outage,
            "slow": self._slow,
            "fast": self._fast,
        }[kind]
        try:
            action()
            self.done[kind] += 1
            self.say(kind)
        except Deferred as exc:
            self.later(DEFER_S, kind)
            if kind not in self.deferred:
                self.deferred.add(kind)
                self.say(f"{kind} deferred: {exc}")
        except (subprocess.SubprocessError, *ADMIN_ERRORS) as exc:
            self.say(f"{kind} FAILED: {exc}")

    def _kill(self) -> None:
        if self.replicas.kill_random() is None:
            raise OSError("no replica running")

    def _pg_crash(self) -> None:
        self.database_down = True
        self.cluster.crash_stop()

    def _pg_restart(self) -> None:
        self.database_down = True
        self.cluster.restart_fast()
        self.database_down = False

    def _pg_start(self) -> None:
        for attempt in range(5):  # a start right after a crash stop can race its cleanup
            try:
                self.cluster.start()
                self.database_down = False
                return
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
                time.sleep(2)

    def _outage(self) -> None:
        if self.slow_until >= 0:  # once the outage is on, replacing the faults would end it
            raise Deferred("a slow window is on")
        self.admin.start_outage(self.plan.outage_s)
        self.outage_end = self.now() + self.plan.outage_s

    def _slow(self) -> None:
        # Replacing the faults ends an outage in the emulator: never during one. Cancels
        # need the database: not while it is down.
        if self.now() < self.outage_end:
            raise Deferred("the outage is on")
        if self.database_down:
            raise Deferred("the database is down")
        if self.slow_until >= 0:
            raise Deferred("another slow window is on")
        self.deferred.discard("slow")
        self.admin.set_faults(slow_faults(self.opts.seed, self.mode, self.opts.request_timeout))
        self.slow_until = self.now() + self.plan.slow_s
        self.next_race = self.now() + self.opts.request_timeout + 0.5
        self.later(self.plan.slow_s, "fast")

    def _fast(self) -> None:
        self.admin.set_faults(base_faults(self.opts.seed))
        self.slow_until = -1.0
        self.next_race = math.inf

    def _queue_429s(self) -> None:
        """2% of the requests since the last tick, as one-shot 429s on the send path."""
        try:
            total = int(self.admin.stats()["total_requests"])
            new = max(0, total - self.requests_seen)
            self.requests_seen = total
            if self.now() < self.outage_end:
                return
            wanted = new * RATE_429 + self.carry_429
            n = int(wanted)
            self.carry_429 = wanted - n
            if n:
                path = SEND_PATH[self.mode] if self.mode != "v1" else "/v1/billing/meter_event*"
                self.admin.fail_next(n, "429", path)
                self.queued_429 += n
        except ADMIN_ERRORS as exc:
            self.say(f"429 injection failed: {exc}")

    def _race(self) -> None:
        try:
            cancel_unknown_outcomes(self.url, self.race_per_tick, self.racing_cancels)
        except psycopg.Error as exc:
            self.say(f"racing cancel failed: {type(exc).__name__}")
        self.next_race = self.now() + 1.0

    def report(self) -> None:
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                counts = dict(
                    conn.execute("SELECT state, count(*) FROM meter_event_outbox GROUP BY 1")
                )
            self.say(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no rows yet")
        except psycopg.Error as exc:
            self.say(f"progress: database unavailable ({type(exc).__name__})")


def writer_plans(url: str, mode: str, opts: Options, deadline: float) -> list[WriterPlan]:
    per_writer = [opts.facts // opts.writers] * opts.writers
    per_writer[0] += opts.facts - sum(per_writer)
    return [
        WriterPlan(
            url=url,
            prefix=f"chaos-{mode}",
            writer=i,
            count=n,
            rate=opts.rate / opts.writers,
            customers=opts.customers,
            cancel_fraction=opts.cancel_fraction,
            rollback_fraction=opts.rollback_fraction,
            seed=opts.seed * 1000 + i,
            deadline=deadline,
        )
        for i, n in enumerate(per_writer)
    ]


def prepare_database(cluster: PrivateCluster, mode: str) -> str:
    url = cluster.create_database(f"chaos_{mode.replace('-', '_')}")
    subprocess.run(
        outbox_relay("migrate", "--database-url", url), check=True, capture_output=True, timeout=300
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return url


def wait_drained(url: str, director: Director, timeout: float) -> float | None:
    """Seconds until no row is pending or in flight, or None after `timeout`."""
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while time.monotonic() - started < timeout:
        director.replicas.revive_exited()
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                (busy,) = conn.execute(
                    "SELECT EXISTS (SELECT FROM meter_event_outbox"
                    " WHERE state IN ('pending', 'in_flight'))"
                ).fetchone()
        except psycopg.Error:
            busy = True
        if not busy:
            return time.monotonic() - started
        if time.monotonic() >= next_progress:
            director.report()
            next_progress = time.monotonic() + PROGRESS_EVERY_S
        time.sleep(1.0)
    return None


def run_mode(cluster: PrivateCluster, mode: str, opts: Options) -> ModeResult:
    log_dir = opts.log_dir / mode
    log_dir.mkdir(parents=True, exist_ok=True)
    url = prepare_database(cluster, mode)
    plan = make_plan(
        facts=opts.facts,
        rate=opts.rate,
        outage_s=opts.outage_s,
        kills=opts.kills,
        slow_s=opts.slow_s,
        seed=opts.seed,
    )
    started = time.monotonic()
    with emulator(log_dir, opts.seed, STRIPE_RATE_LIMIT) as admin:
        admin.set_faults(base_faults(opts.seed))
        replicas = Replicas(
            url,
            admin.base_url,
            mode,
            log_dir,
            env={"OUTBOX_REQUEST_TIMEOUT": str(opts.request_timeout)},
        )
        replicas.rng.seed(opts.seed)
        # Bounded even when the machine writes at a third of the nominal rate.
        hard_stop = 3 * (plan.writing_s + plan.outage_s) + 600
        writers = Writers(writer_plans(url, mode, opts, time.time() + hard_stop))
        director = Director(plan, opts, mode, cluster, url, admin, replicas, writers)
        try:
            replicas.start_all()
            writers.start()
            director.say(
                f"{opts.facts:,} facts at {opts.rate:g}/s by {opts.writers} writers; "
                f"outage {plan.outage_s:g} s at p={plan.outage_at:.0f} s; "
                f"{plan.kills} kills; logs in {log_dir}"
            )
            director.play(hard_stop)
            director.chaos_over_at = time.time()
            director.say(
                f"chaos over; {writers.committed.value:,} facts committed; waiting for the drain"
            )
            drain_s = wait_drained(url, director, opts.drain_timeout)
            if drain_s is not None:  # measured from the last commit
                last_commit = max((r.last_commit for r in writers.results), default=time.time())
                drain_s += director.chaos_over_at - last_commit
            director.say(
                "NOT drained"
                if drain_s is None
                else f"drained {drain_s:.1f} s after the last commit"
            )
        finally:
            replicas.stop_all()
            writers.stop()
        ledger = admin.ledger()
        stats = admin.stats()
    rows, acked = read_outbox(url), [i for r in writers.results for i in r.committed]
    verdict = judge(rows, ledger, acked)
    chaos = chaos_applied(director, replicas, writers, stats, plan)
    report_mode(mode, url, verdict, chaos, ledger)
    return ModeResult(mode, verdict, drain_s, time.monotonic() - started, chaos)


def read_outbox(url: str) -> list[OutboxRow]:
    with psycopg.connect(url) as conn:
        return [OutboxRow(*row) for row in conn.execute(ROWS)]


def chaos_applied(
    director: Director,
    replicas: Replicas,
    writers: Writers,
    stats: dict[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    """What was actually done to the system (as opposed to what was planned)."""
    results, crashed = writers.results, writers.crashed
    return {
        "replica SIGKILLs": replicas.kills,
        "replica exits on their own": replicas.unexpected_exits,
        "PostgreSQL crash stops": director.done["pg_crash"],
        "PostgreSQL fast restarts": director.done["pg_restart"],
        "Stripe outage (s)": plan.outage_s if director.done["outage"] else 0,
        "slow windows": director.done["slow"],
        "cancels right after commit": sum(len(r.cancelled) for r in results),
        "cancels racing unknown outcomes": len(director.racing_cancels),
        "rolled-back facts": sum(len(r.rolled_back) for r in results),
        "writer reconnects": sum(r.reconnects for r in results),
        "writers that gave up": [r.gave_up for r in results if r.gave_up],
        "writers that crashed (see the output above)": crashed,
        "429s queued": director.queued_429,
        "emulator faults injected": stats.get("faults_injected"),
        "emulator requests": stats.get("total_requests"),
        "emulator 429s": stats.get("status_429"),
        "idempotent replays": stats.get("idempotent_replays"),
        "concurrency conflicts": stats.get("concurrency_conflicts"),
        "stream duplicates ignored": stats.get("stream_duplicates_ignored"),
    }


def report_mode(
    mode: str, url: str, verdict: Verdict, chaos: dict[str, Any], ledger: dict[str, Any]
) -> None:
    print(f"\n## {mode}: chaos applied\n")
    for name, value in chaos.items():
        print(f"- {name}: {value}")
    status = subprocess.run(
        outbox_relay("status", "--json", "--database-url", url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"\n`outbox-relay status --json` ({mode}):\n")
    print(status.stdout.strip() or status.stderr.strip())
    for name, identifiers in (
        ("lost", verdict.lost),
        ("counted twice", verdict.twice),
        ("cancelled but counted", verdict.cancelled_counted),
        ("failed", verdict.failed),
        ("not drained", verdict.not_drained),
        ("counted, never committed", verdict.phantom),
    ):
        if identifiers:
            print(f"\n{mode}: {len(identifiers)} {name}, e.g.:")
            for identifier in identifiers[:SAMPLES]:
                print(describe(url, identifier, ledger))


def describe(url: str, identifier: str, ledger: dict[str, Any]) -> str:
    """One fact's row, its attempt history and its events in the ledger (for the report)."""
    inspected = subprocess.run(
        outbox_relay("inspect", identifier, "--json", "--database-url", url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    attempts: list[Any] = []
    try:
        row = json.loads(inspected.stdout)
        keep = ("state", "action", "attempts", "last_error_code", "last_error_message")
        summary = {k: row.get(k) for k in keep}
        # the row's story as inspect tells it: history rows and a call carried on the row
        fields = ("attempt", "action", "state", "http_status", "code", "relay_id", "latency_ms")
        attempts = [[a.get(f) for f in fields] for a in row.get("history", [])]
    except json.JSONDecodeError:
        summary = {"inspect": inspected.stdout.strip() or inspected.stderr.strip()}
    events = [
        {k: e[k] for k in ("status", "cancelled", "source", "received_at")}
        for e in ledger["events"] + ledger["rejected"]
        if e["identifier"] == identifier
    ]
    history = f"\n  attempts {attempts}" if attempts else ""
    return f"- {identifier}: {summary}{history}\n  ledger events {events}"


def print_table(results: list[ModeResult], opts: Options) -> None:
    header = [
        "mode",
        "committed",
        "counted by Stripe",
        "lost",
        "counted twice",
        "cancelled",
        "cancelled correctly",
        "cancelled but counted",
        "rows failed",
        "counted, not committed",
        "not drained",
        "drain s",
        "run s",
    ]
    rows = [
        [
            r.mode,
            f"{r.verdict.committed:,}",
            f"{r.verdict.counted:,}",
            len(r.verdict.lost),
            len(r.verdict.twice),
            r.verdict.cancelled,
            r.verdict.cancelled_ok,
            len(r.verdict.cancelled_counted),
            len(r.verdict.failed),
            len(r.verdict.phantom),
            len(r.verdict.not_drained),
            "-" if r.drain_s is None else f"{r.drain_s:.1f}",
            f"{r.run_s:.0f}",
        ]
        for r in results
    ]
    title = (
        f"chaos run: {opts.facts:,} facts per mode at {opts.rate:g}/s, 3 replicas, "
        f"{opts.kills} SIGKILLs, PostgreSQL crash stop + fast restart, {opts.outage_s:g} s "
        f"Stripe outage (backoff cap {backoff_cap():g} s), 5% 5xx, 2% 429, 1% resets, "
        f"1% processed-then-dropped, cancels racing timeouts (seed {opts.seed})"
    )
    table(title, header, rows)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Chaos run: 3 relays, kills, PostgreSQL crashes, Stripe outage and faults"
    )
    parser.add_argument("--quick", action="store_true", help="5,000 facts, 20 s outage")
    parser.add_argument("--facts", type=int, help="facts per mode (default 100,000)")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--rate", type=float, help="facts/s written (default 500; quick 100)")
    parser.add_argument("--writers", type=int, default=4, help="writer processes")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--outage", type=float, help="outage seconds (default backoff cap + 30)")
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs per mode")
    parser.add_argument("--request-timeout", type=float, default=2.0, help="relay's, seconds")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds (default 2 x cap + 900; quick: + 60)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-dir", type=Path, help="relay/emulator logs (default: a temp dir)")
    args = parser.parse_args(argv)
    quick = args.quick
    facts = args.facts or (5_000 if quick else 100_000)
    rate = args.rate or (100.0 if quick else 500.0)
    outage = args.outage if args.outage is not None else (20.0 if quick else backoff_cap() + 30)
    opts = Options(
        facts=facts,
        rate=rate,
        writers=args.writers,
        customers=args.customers,
        outage_s=outage,
        kills=max(10, args.kills),
        slow_s=min(12.0, max(8.0, 0.1 * facts / rate)),
        request_timeout=args.request_timeout,
        cancel_fraction=0.005,
        race_fraction=0.005,
        rollback_fraction=0.005,
        drain_timeout=args.drain_timeout or (2 * backoff_cap() + (60 if quick else 900)),
        seed=args.seed,
        log_dir=args.log_dir or Path(tempfile.mkdtemp(prefix="outbox-chaos-")),
        modes=MODES if args.mode == "both" else (args.mode,),
    )
    return replace(opts, log_dir=opts.log_dir.resolve())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: the finally blocks run


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    results: list[ModeResult] = []
    with private_cluster() as cluster:
        print(f"private PostgreSQL {cluster.version} cluster {cluster.name} on {cluster.port}")
        for mode in opts.modes:
            results.append(run_mode(cluster, mode, opts))
    print_table(results, opts)
    ok = all(r.verdict.ok for r in results)
    print(f"\n{'PASS' if ok else 'FAIL'}: " + "; ".join(_summary(r) for r in results))
    return 0 if ok else 1


def _summary(r: ModeResult) -> str:
    v = r.verdict
    return (
        f"{r.mode}: lost {len(v.lost)}, counted twice {len(v.twice)}, failed {len(v.failed)}, "
        f"cancelled but counted {len(v.cancelled_counted)}, not drained {len(v.not_drained)}"
    )


if __name__ == "__main__":
    raise SystemExit(main())

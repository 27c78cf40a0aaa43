"""Relay throughput through PgBouncer (transaction and session pooling) beside direct.

Run from the repository root:  python -m bench.pgbouncer_throughput [--rows 10000]
                                 [--rounds 3] [--latency-ms 0] [--pool-size 8]

In one run, `--rounds` rounds of the three paths, alternating (the order turns each round, so a
neighbour's load lands on each path alike), medians printed beside each round: the relay
process and the emulator process as in bench/relay_throughput.py (a) (v1, lean client, 5,000
customers, 128 calls in flight, no rate limit), with the relay's OUTBOX_DATABASE_URL pointing
at PostgreSQL directly, then at Debian's PgBouncer (tests/support/pgbouncer.py starts it on a
free port) in each pool mode. Transaction pooling runs with OUTBOX_POLL_ONLY=true (LISTEN needs
a session). The relay finds the pooler by itself (OUTBOX_DATABASE_PREPARE=auto): no prepared
statements through it. Target: through PgBouncer >= 90% of the direct events/s. Also printed:
PgBouncer's own CPU per event, which the direct run does not pay."""

import argparse
import contextlib
import os
from collections.abc import Iterator

from bench.common import ADMIN_URL, cpu_seconds, median, table
from bench.relay_throughput import Result, end_to_end
from tests.support.pgbouncer import Bouncer, bouncer


def _pids_of(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() == name:
                    pids.append(int(entry))
    return pids


@contextlib.contextmanager
def _through(mode: str, pool_size: int) -> Iterator[Bouncer | None]:
    if mode == "direct":
        yield None
    else:
        with bouncer(ADMIN_URL, mode, pool_size=pool_size) as running:
            yield running


def run(mode: str, rows: int, latency_ms: int, pool_size: int) -> Result:
    env = {
        "STRIPE_API_KEY": "sk_live_bench",
        "OUTBOX_RATE_LIMIT": "100000",
        "OUTBOX_CONCURRENCY": "128",
        "OUTBOX_POLL_ONLY": "true" if mode == "transaction" else "false",
    }
    args = ("--rate-limit", "0", "--latency-ms", str(latency_ms))
    with _through(mode, pool_size) as running:
        before = {pid: cpu_seconds(pid) for pid in _pids_of("pgbouncer")}
        url = running.url if running else None
        result = end_to_end(rows, 5000, args, 600, relay_url=url, **env)
        after = {pid: cpu_seconds(pid) for pid in _pids_of("pgbouncer")}
    spent = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    result["pgbouncer us"] = 1e6 * spent / rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=8, help="PgBouncer's default_pool_size")
    opts = parser.parse_args()
    loads = [os.getloadavg()[0]]
    results: dict[str, list[Result]] = {m: [] for m in MODES}
    for n in range(opts.rounds):
        for mode in MODES[n % len(MODES) :] + MODES[: n % len(MODES)]:
            results[mode].append(run(mode, opts.rows, opts.latency_ms, opts.pool_size))
        loads.append(os.getloadavg()[0])
    columns = ["events/s", "wall s", "retries", "relay us", "pg us", "pgbouncer us"]
    medians = {m: {c: median([r[c] for r in rs]) for c in columns} for m, rs in results.items()}
    direct = medians["direct"]["events/s"]
    table(
        f"Relay through PgBouncer: medians of {opts.rounds} alternating rounds ({opts.rows:,} "
        f"rows each, v1 lean, {opts.latency_ms} ms Stripe latency, PgBouncer pool "
        f"{opts.pool_size}; load average {min(loads):.1f}-{max(loads):.1f})",
        ["database path", *columns, "of direct", "events/s per round"],
        [
            [
                m,
                *(r[c] for c in columns),
                f"{100 * r['events/s'] / direct:.0f}%",
                " / ".join(f"{x['events/s']:,.0f}" for x in results[m]),
            ]
            for m, r in medians.items()
        ],
    )


MODES = ("direct", "transaction", "session")

if __name__ == "__main__":
    main()

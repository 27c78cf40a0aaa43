"""Commit -> accepted latency at a steady 500 events/s, Stripe latency 0 ms.

Run from the repository root:  python -m bench.latency [--rounds 3] [--seconds 20] [--quick]

An application thread commits one usage fact per transaction (record_usage), paced at the
target rate, and notes each commit's wall-clock time; a relay process (and the emulator
process) turn them into accepted rows. Latency = accepted_at (the relay's outcome write) minus
the commit time. Variants, interleaved round by round: with the wake-up hint (NOTIFY, coalesced)
and poll-only (1 s polling, no hint). Target: p99 <= 100 ms with the hint.
"""

import argparse
import statistics
import time
from datetime import UTC, datetime

import psycopg

import outbox
from bench.common import (
    emulator_process,
    median,
    relay_process,
    scratch_database,
    table,
    wait_drained,
)

WRITERS = 4  # application threads; one alone cannot always sustain 500 commits/s here


def write_paced(url: str, rate: float, seconds: float, notify: bool) -> dict[str, datetime]:
    """Commit `rate` facts per second for `seconds` from WRITERS threads; identifier -> time."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic() + 0.1
    with ThreadPoolExecutor(WRITERS) as pool:
        parts = pool.map(lambda w: _writer(url, w, rate, seconds, notify, start), range(WRITERS))
        return {k: v for part in parts for k, v in part.items()}


def _writer(
    url: str, w: int, rate: float, seconds: float, notify: bool, start: float
) -> dict[str, datetime]:
    committed: dict[str, datetime] = {}
    interval = WRITERS / rate
    with psycopg.connect(url) as conn:
        for i in range(w, int(rate * seconds), WRITERS):
            delay = start + (i // WRITERS) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            identifier = f"lat-{i}"
            outbox.record_usage(
                conn,
                event_name="api_calls",
                customer=f"cus_{i % 1000}",
                value=1,
                identifier=identifier,
                notify=notify,
            )
            conn.commit()
            committed[identifier] = datetime.now(UTC)
    return committed


def latencies_ms(url: str, committed: dict[str, datetime]) -> list[float]:
    with psycopg.connect(url) as conn:
        accepted = dict(
            conn.execute(
                "SELECT identifier, accepted_at FROM meter_event_outbox"
                " WHERE accepted_at IS NOT NULL"
            )
        )
    return [(accepted[i] - t).total_seconds() * 1000 for i, t in committed.items() if i in accepted]


def one_run(rate: float, seconds: float, hint: bool) -> dict[str, float]:
    with scratch_database() as url, emulator_process("--rate-limit", "0") as emulator:
        extra = {} if hint else {"OUTBOX_POLL_ONLY": "true"}
        with relay_process(url, emulator.url, OUTBOX_RATE_LIMIT="100000", **extra):
            time.sleep(1.0)  # let the relay connect and LISTEN before the first commit
            began = time.monotonic() + 0.1
            committed = write_paced(url, rate, seconds, notify=hint)
            achieved = len(committed) / (time.monotonic() - began)
            wait_drained(url, timeout=60)
        values = sorted(latencies_ms(url, committed))
    q = statistics.quantiles(values, n=100)
    return {"p50": q[49], "p99": q[98], "max": values[-1], "rate": achieved, "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, seconds = (1, 5.0) if args.quick else (args.rounds, args.seconds)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(rounds):
        for hint in (True, False):
            result = one_run(args.rate, seconds, hint)
            runs[hint].append(result)
            print(f"round {i + 1} hint={hint}: {result}", flush=True)
    rows = []
    for hint, label in ((True, "wake-up hint (NOTIFY, coalesced)"), (False, "poll-only (1 s)")):
        rs = runs[hint]
        rows.append(
            [
                label,
                median([r["rate"] for r in rs]),
                median([r["p50"] for r in rs]),
                median([r["p99"] for r in rs]),
                median([r["max"] for r in rs]),
            ]
        )
    table(
        f"commit -> accepted latency, {args.rate:g} events/s target, 0 ms Stripe latency, "
        f"median of {rounds} round(s) of {seconds:g} s",
        ["variant", "achieved events/s", "p50 ms", "p99 ms", "max ms"],
        rows,
    )


if __name__ == "__main__":
    main()

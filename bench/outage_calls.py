"""Calls two relays make to Stripe during a 503 outage: this checkout, and (optionally) another
checkout (e.g. main, before the outage breaker), in one run.

    python -m bench.outage_calls                                # 150 s outage, this checkout
    python -m bench.outage_calls --before /work/main            # ... and main's relay beside it
    python -m bench.outage_calls --outage 20 --rows 500         # a quick look

Per variant: a scratch database migrated by that checkout's `outbox-relay migrate`, ROWS pending
facts over 200 customers, two `outbox-relay run` processes of that checkout (relay ids a and b,
a test key: 25 calls/s shared, as Stripe's test mode allows) against one emulator process, and
once both relays have sent a first accepted row, a 503 outage of OUTAGE seconds in front of the
emulator's API. Printed: the calls made during the outage (all answered 503), the calls per
second, then after the outage: how long until every row was accepted and how many failed.
The emulator is this checkout's in both variants.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    ADMIN_URL,
    emulator_process,
    insert_rows,
    relay_process,
    scratch_database,
    table,
)

ADMIN = "/_emulator"
REPO = Path(__file__).resolve().parent.parent


def _admin(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{ADMIN}{path}", data=data, method="POST" if data else "GET"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def _calls(base: str) -> tuple[int, int]:
    """(all requests to the meter event endpoint, those answered 503) so far."""
    routes = _admin(base, "/stats")["requests"]
    events = {k: v for route, counts in routes.items() if "meter_events" in route
              for k, v in counts.items()}  # fmt: skip
    return sum(events.values()), int(events.get("503", 0))


def _count(url: str, state: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM meter_event_outbox WHERE state = %s", (state,)
        ).fetchone() or (0,)
    return int(n)


def _wait(condition: Any, timeout: float) -> float:
    """Seconds until `condition()` held (polled every 0.2 s)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)
    return time.monotonic() - start


def variant(checkout: Path, rows: int, outage: float) -> list[Any]:
    env = {"PYTHONPATH": str(checkout), "OUTBOX_LOG_LEVEL": "WARNING"}
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(ADMIN_URL, migrated=False))
        subprocess.run(
            [sys.executable, "-m", "relay.cli", "migrate", "--database-url", url],
            env={**os.environ, **env},
            cwd=checkout,  # `-m` puts the working directory first on the path
            check=True,
            capture_output=True,
        )
        emulator = stack.enter_context(emulator_process(core=None))
        insert_rows(url, rows, customers=200)
        for name in ("a", "b"):  # relay_process passes os.environ on, then these
            stack.enter_context(
                relay_process(url, emulator.url, str(checkout), OUTBOX_RELAY_ID=name, **env)
            )
        _wait(lambda: _count(url, "accepted") >= 2, 60)
        before_all, before_503 = _calls(emulator.url)
        _admin(emulator.url, "/outage", {"duration_s": outage, "mode": "503"})
        time.sleep(outage)  # the outage runs its course; the emulator ends it
        after_all, after_503 = _calls(emulator.url)
        drained = _wait(lambda: _count(url, "accepted") + _count(url, "failed") >= rows, 900)
        failed = _count(url, "failed")
    during = after_all - before_all
    return [
        str(checkout),
        during,
        after_503 - before_503,
        during / outage,
        drained,
        failed,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=150.0, help="seconds of 503s")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--before", type=Path, help="another checkout to run first (e.g. main)")
    args = parser.parse_args()
    checkouts = ([args.before.resolve()] if args.before else []) + [REPO]
    results = [variant(c, args.rows, args.outage) for c in checkouts]
    table(
        f"Two relays, test key (25 calls/s shared), {args.rows:,} rows, "
        f"a {args.outage:g} s 503 outage",
        [
            "relay code",
            "calls during the outage",
            "of them 503",
            "calls/s",
            "s to all accepted after it",
            "rows failed",
        ],
        results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

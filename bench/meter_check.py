"""Per-row cost of the meter catalogue's check before a send (relay/stripe/catalogue.py):
default keys (the row passes untouched), custom keys (the payload is rebuilt), a held row.

    python -m bench.meter_check [--rows N] [--repeats R]

Prints a table of the median over R repeats, in microseconds per row. CPU only, no I/O.
"""

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime

from relay.core.meters import MeterInfo
from relay.core.rows import Claimed
from relay.stripe.catalogue import MeterCatalogue

NOW = datetime.now(UTC)


def _row(i: int, event_name: str) -> Claimed:
    return Claimed(
        i, uuid.uuid4(), f"u{i}", event_name, "cus_1",
        '{"region": "eu", "value": "1", "stripe_customer_id": "cus_1"}',
        NOW, None, "report", 0, 0, None, NOW, None, NOW,
    )  # fmt: skip


def _meter(name: str, customer_key: str = "stripe_customer_id") -> MeterInfo:
    return MeterInfo("", f"mtr_{name}", name, "active", customer_key, "value", None, "sum")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    catalogue = MeterCatalogue(hold_seconds=300)
    catalogue.replace("", [_meter("api_calls"), _meter("tokens", "customer_id")])
    print(f"{'case':<14} {'us/row (median of ' + str(args.repeats) + ')':>24}")
    for case, name in (("default keys", "api_calls"), ("custom keys", "tokens"), ("held", "none")):
        rows = [_row(i, name) for i in range(args.rows)]
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for r in rows:
                catalogue.check(r)
            times.append((time.perf_counter() - started) / args.rows * 1e6)
        print(f"{case:<14} {statistics.median(times):>24.3f}")


if __name__ == "__main__":
    main()

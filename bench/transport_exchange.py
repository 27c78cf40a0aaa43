"""CPU per exchange in the lean client's connection: write a request, parse a Stripe-sized
answer, resolve the call's future. No network and no server: a transport that drops what is
written, so only relay/stripe/transport.py's own work is timed (llhttp, the connection's state,
the answer's bounds).

Run from the repository root:  python -m bench.transport_exchange [--rounds 5] [--calls 100000]
                                 [--against PATH]

`--against PATH`: another checkout of the repository (an older commit, say) timed in the same
rounds, alternating, each round in a fresh process; the table shows both medians.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BODY = (
    b'{"object":"billing.meter_event","created":1760000000,"event_name":"api_calls",'
    b'"identifier":"u123456","livemode":false,"payload":{"stripe_customer_id":"cus_123",'
    b'"value":"1"},"timestamp":1760000000}'
)
# The headers of a Stripe answer to a meter event (names and sizes as Stripe sends them).
HEAD = [
    "HTTP/1.1 200 OK",
    "Server: nginx",
    "Date: Sun, 06 Dec 2026 10:00:00 GMT",
    "Content-Type: application/json",
    f"Content-Length: {len(BODY)}",
    "Connection: keep-alive",
    "Access-Control-Allow-Credentials: true",
    "Access-Control-Allow-Methods: GET, HEAD, PUT, PATCH, POST, DELETE",
    "Access-Control-Allow-Origin: *",
    "Access-Control-Max-Age: 300",
    "Cache-Control: no-cache, no-store",
    "Idempotency-Key: u123456#g0",
    "Original-Request: req_abcdefghijkl",
    "Request-Id: req_abcdefghijkl",
    "Stripe-Version: 2025-03-31.basil",
    "Strict-Transport-Security: max-age=63072000; includeSubDomains; preload",
]
ANSWER = ("\r\n".join(HEAD) + "\r\n\r\n").encode() + BODY
REQUEST = b"POST /v1/billing/meter_events HTTP/1.1\r\n" + b"x" * 900


class _Sink:
    """A transport that drops what is written."""

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass


async def _time(calls: int) -> float:
    """Microseconds of CPU per exchange on one connection, after a warm-up."""
    from relay.stripe import transport

    conn = transport._Connection(asyncio.get_running_loop(), lambda _: None)
    conn.connection_made(_Sink())  # type: ignore[arg-type]

    def exchange() -> None:
        answer = conn.exchange(REQUEST)
        conn.data_received(ANSWER)
        answer.result()
        if hasattr(conn, "reusable"):  # before the connection state: the pool's part
            conn.reusable = True

    for _ in range(2_000):
        exchange()
    started = time.process_time()
    for _ in range(calls):
        exchange()
    return (time.process_time() - started) / calls * 1e6


def _child(tree: str, calls: int) -> float:
    """One round in a fresh process importing relay from `tree` (this file loaded by path: an
    older checkout has no copy of it)."""
    code = (
        f"import sys; sys.path.insert(0, {tree!r}); import asyncio, importlib.util; "
        f"spec = importlib.util.spec_from_file_location('exchange', {__file__!r}); "
        "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
        f"print(asyncio.run(bench._time({calls})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tree
    )
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--against", help="another checkout, timed in the same rounds")
    args = parser.parse_args()
    trees = [str(ROOT)] + ([str(Path(args.against).resolve())] if args.against else [])
    runs: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            runs[tree].append(_child(tree, args.calls))
    print(f"Lean client, CPU per exchange ({args.calls:,} calls, {args.rounds} rounds)\n")
    print("| tree | median us/exchange | rounds |")
    print("|---|---|---|")
    for tree, times in runs.items():
        rounds = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {tree} | {statistics.median(times):.2f} | {rounds} |")


if __name__ == "__main__":
    main()

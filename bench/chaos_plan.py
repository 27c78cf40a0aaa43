"""The chaos schedule of one mode, decided before the run starts (seeded).

Faults are placed on the *progress clock*: committed facts divided by the nominal rate while
the writers run (so "in the middle of writing" stays in the middle on a slow machine), then
wall seconds once they are done. W is the writing time at the nominal rate. What follows a
fault (the restart after a kill, the database start after a crash stop, what comes after
the outage; the end of a slow window) runs on the wall clock from that fault, because the
writers stall while the database is down.

The Stripe outage sits in the middle of writing and outlasts the relay's backoff cap by
default, so every row waiting for it is at the cap when it ends. The database is crashed at
20% and restarted during the backlog that follows the outage; slow Stripe windows (calls time
out, so their outcome is unknown) come at 5%, 30% and after the outage; replicas are killed
throughout.
"""

import inspect
import random
from dataclasses import dataclass

from relay.stripe.policy import backoff

FAULT_PATHS = ("/v1/billing/meter_event*", "/v2/billing/meter_event*")
SEND_PATH = {"v1": "/v1/billing/meter_events", "v2-stream": "/v2/billing/meter_event_stream"}
RATE_429 = 0.02


def backoff_cap() -> float:
    """The relay's backoff cap, read from its policy (the longest delay it ever draws)."""
    return float(inspect.signature(backoff).parameters["cap"].default)


@dataclass(frozen=True)
class Event:
    """A fault at `at` on the progress clock, and what follows it: (wall seconds later, kind)."""

    at: float
    kind: str  # kill | revive | pg_crash | pg_start | pg_restart | outage | slow | fast
    then: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    writing_s: float
    outage_at: float
    outage_s: float
    slow_s: float
    events: tuple[Event, ...]

    @property
    def kills(self) -> int:
        return sum(1 for e in self.events if e.kind == "kill")


def make_plan(
    *, facts: int, rate: float, outage_s: float, kills: int, slow_s: float, seed: int
) -> Plan:
    """Place every fault on the run's progress clock (deterministic for a seed)."""
    rng = random.Random(seed)
    w = facts / rate
    outage_at = 0.5 * w
    after_outage = ((outage_s + 5, "pg_restart"), (outage_s + 15, "slow"))
    events = [
        Event(0.05 * w, "slow"),
        Event(0.2 * w, "pg_crash", ((5.0, "pg_start"),)),
        Event(0.3 * w, "slow"),
        Event(outage_at, "outage", after_outage),
    ]
    kills_until = max(w, outage_at + outage_s + 15 + slow_s)
    for _ in range(kills):
        at = rng.uniform(0.05 * w, kills_until)
        events.append(Event(at, "kill", ((rng.uniform(0.5, 3.0), "revive"),)))
    ordered = tuple(sorted(events, key=lambda e: e.at))
    return Plan(w, outage_at, outage_s, slow_s, ordered)


def base_faults(seed: int) -> dict[str, object]:
    """5% 5xx (500/502/503), 1% connection resets, 1% processed-then-dropped on every
    meter-event path (v1 events and adjustments, v2 session and stream). The 2% of 429s are
    queued by the director as one-shot faults (the emulator has no 429 rate)."""
    return {
        "rate_500": 0.0167,
        "rate_502": 0.0167,
        "rate_503": 0.0166,
        "rate_reset": 0.01,
        "rate_drop_after_processing": 0.01,
        "paths": list(FAULT_PATHS),
        "seed": seed,
    }


def slow_faults(seed: int, mode: str, timeout_s: float) -> dict[str, object]:
    """The base faults on the send path only, plus latency from half to three times the
    relay's request timeout: most calls time out while Stripe still processes them, and
    adjustments (not slowed) overtake them."""
    latency = {"kind": "uniform", "low_ms": 500 * timeout_s, "high_ms": 3000 * timeout_s}
    return base_faults(seed) | {"paths": [SEND_PATH[mode]], "latency": latency}

"""The chaos schedule of one mode, decided before the run starts (seeded, printed).

Times are seconds from the moment the writers start; W is how long writing takes at the
configured rate. The Stripe outage sits in the middle of writing, longer than the relay's
backoff cap by default, so every row waiting for it is at the cap when it ends. The database
is crashed before the outage and restarted during the backlog that follows it; slow Stripe
windows (calls time out, so their outcome is unknown) come before, between and after;
replicas are killed throughout.
"""

import inspect
import random
from dataclasses import dataclass

from relay.policy import backoff

FAULT_PATHS = ("/v1/billing/meter_event*", "/v2/billing/meter_event*")
SEND_PATH = {"v1": "/v1/billing/meter_events", "v2-stream": "/v2/billing/meter_event_stream"}
RATE_429 = 0.02


def backoff_cap() -> float:
    """The relay's backoff cap, read from its policy (the longest delay it ever draws)."""
    return float(inspect.signature(backoff).parameters["cap"].default)


@dataclass(frozen=True)
class Event:
    at: float
    kind: str  # kill | revive | pg_crash | pg_start | pg_restart | outage | slow | fast


@dataclass(frozen=True)
class Plan:
    writing_s: float
    outage_at: float
    outage_s: float
    slow_s: float
    chaos_end: float
    events: tuple[Event, ...]

    @property
    def kills(self) -> int:
        return sum(1 for e in self.events if e.kind == "kill")


def make_plan(
    *, facts: int, rate: float, outage_s: float, kills: int, slow_s: float, seed: int
) -> Plan:
    """Place every fault on the run's timeline (deterministic for a seed)."""
    rng = random.Random(seed)
    w = facts / rate
    outage_at = 0.5 * w
    outage_end = outage_at + outage_s
    slow_starts = [0.1 * w, 0.3 * w, outage_end + 15]
    chaos_end = max(w, outage_end + 15 + slow_s) + 5
    events = [
        Event(0.2 * w, "pg_crash"),
        Event(0.2 * w + 5, "pg_start"),
        Event(outage_at, "outage"),
        Event(outage_end + 5, "pg_restart"),
    ]
    for start in slow_starts:
        events += [Event(start, "slow"), Event(start + slow_s, "fast")]
    for _ in range(kills):
        at = rng.uniform(0.05 * w, chaos_end - 5)
        events += [Event(at, "kill"), Event(at + rng.uniform(0.5, 3.0), "revive")]
    ordered = tuple(sorted(events, key=lambda e: e.at))
    return Plan(w, outage_at, outage_s, slow_s, chaos_end, ordered)


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

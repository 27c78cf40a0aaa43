"""Fault injection: latency, 5xx, 429 bursts, resets, processed-then-dropped, outages.

Tests need determinism more than randomness, so there are two mechanisms:

* `Faults` rates draw from `random.Random(seed)`, one draw per matching request, in arrival
  order: the same seed and the same request sequence give the same faults.
* `fail_next` queues one-shot directives ("the next N requests to PATH fail like this"),
  which involve no randomness at all.

Where a fault strikes matters for the relay's correctness, and follows Stripe:

* 502/503, outages, 429 bursts and resets happen in FRONT of the API: nothing executes,
  nothing is counted, nothing is saved under the idempotency key.
* 500 happens DURING execution: the event is not counted, but the 500 is saved under the
  idempotency key, so a retry with the same key replays the 500.
* drop-after-processing happens AFTER execution: the event is counted and the 200 saved,
  then the connection is cut without an answer.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from relay.emulator.clock import Clock

FaultKind = Literal["status", "429", "reset", "drop_after_processing"]
OutageMode = Literal["503", "reset"]
Stage = Literal["pre", "exec", "post"]
_KINDS = ("status", "429", "reset", "drop_after_processing")


@dataclass(frozen=True)
class Latency:
    """Added server processing time: fixed, uniform(low, high) or normal(mean, stddev), in ms."""

    kind: Literal["fixed", "uniform", "normal"] = "fixed"
    ms: float = 0.0
    low_ms: float = 0.0
    high_ms: float = 0.0
    mean_ms: float = 0.0
    stddev_ms: float = 0.0

    @classmethod
    def fixed(cls, ms: float) -> Latency:
        return cls(kind="fixed", ms=ms)

    @classmethod
    def uniform(cls, low_ms: float, high_ms: float) -> Latency:
        return cls(kind="uniform", low_ms=low_ms, high_ms=high_ms)

    @classmethod
    def normal(cls, mean_ms: float, stddev_ms: float) -> Latency:
        return cls(kind="normal", mean_ms=mean_ms, stddev_ms=stddev_ms)

    @property
    def is_random(self) -> bool:
        return self.kind != "fixed"

    @property
    def is_zero(self) -> bool:
        if self.kind == "fixed":
            return self.ms <= 0
        if self.kind == "uniform":
            return self.high_ms <= 0
        return self.mean_ms <= 0 and self.stddev_ms <= 0

    def sample_seconds(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            ms = self.ms
        elif self.kind == "uniform":
            ms = rng.uniform(self.low_ms, self.high_ms)
        else:
            ms = rng.gauss(self.mean_ms, self.stddev_ms)
        return max(0.0, ms) / 1000.0


@dataclass(frozen=True)
class Outage:
    """A period during which every API request fails (503 or connection reset).

    `start_in_s` and `duration_s` are on the emulator clock, so `advance_clock` can end it.
    """

    duration_s: float
    mode: OutageMode = "503"
    start_in_s: float = 0.0


@dataclass(frozen=True)
class Faults:
    """Randomised (seeded) faults. Rates are probabilities per matching request."""

    latency: Latency | None = None
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_reset: float = 0.0
    rate_drop_after_processing: float = 0.0
    # The next N matching requests get a 429 (queued as one-shot directives).
    burst_429: int = 0
    outage: Outage | None = None
    # Only requests whose path matches one of these are affected ("/x*" = prefix); () = all.
    paths: tuple[str, ...] = ()
    # None = the emulator's configured seed.
    seed: int | None = None

    def __post_init__(self) -> None:
        if sum(self._rates()) > 1.0:
            raise ValueError("fault rates add up to more than 1")
        object.__setattr__(self, "paths", tuple(self.paths))

    def _rates(self) -> tuple[float, ...]:
        return (
            self.rate_500,
            self.rate_502,
            self.rate_503,
            self.rate_reset,
            self.rate_drop_after_processing,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        """Build from the admin endpoint's JSON (`latency_ms` is a shortcut for fixed latency)."""
        data = dict(data)
        latency = data.pop("latency", None)
        latency_ms = data.pop("latency_ms", None)
        if isinstance(latency, dict):
            latency = Latency(**latency)
        elif isinstance(latency, int | float):
            latency = Latency.fixed(float(latency))
        if latency_ms is not None:
            latency = Latency.fixed(float(latency_ms))
        outage = data.pop("outage", None)
        if isinstance(outage, dict):
            outage = Outage(**outage)
        if "paths" in data:
            data["paths"] = tuple(data["paths"])
        return cls(latency=latency, outage=outage, **data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one request."""

    kind: FaultKind
    status: int = 0

    @property
    def stage(self) -> Stage:
        if self.kind == "drop_after_processing":
            return "post"
        if self.kind == "status" and self.status == 500:
            return "exec"
        return "pre"


@dataclass
class _Directive:
    decision: FaultDecision
    path: str | None
    remaining: int
    from_faults: bool = False  # queued by Faults.burst_429: replaced by the next configure()


@dataclass
class _OutageWindow:
    start: float
    end: float
    mode: OutageMode


@dataclass
class FaultInjector:
    """Holds the active faults and decides, per request, which one (if any) applies."""

    clock: Clock
    seed: int = 0
    faults: Faults = field(default_factory=Faults)
    _rng: random.Random = field(init=False)
    _directives: deque[_Directive] = field(init=False, default_factory=deque)
    _outage: _OutageWindow | None = field(init=False, default=None)
    _active: bool = field(init=False, default=False)
    injected: dict[str, int] = field(init=False, default_factory=dict)
    gates: list[Gate] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.configure(self.faults)

    def configure(self, faults: Faults | None) -> None:
        """Replace the random faults (and reseed), keeping `fail_next` directives."""
        self.faults = faults or Faults()
        self._directives = deque(d for d in self._directives if not d.from_faults)
        seed = self.faults.seed if self.faults.seed is not None else self.seed
        self._rng = random.Random(seed)  # noqa: S311 (seeded fault schedule, nothing secret)
        self._outage = None
        if self.faults.outage is not None:
            self.start_outage(
                self.faults.outage.duration_s,
                self.faults.outage.mode,
                start_in_s=self.faults.outage.start_in_s,
            )
        if self.faults.burst_429 > 0:
            burst = FaultDecision(kind="429", status=429)
            self._directives.append(_Directive(burst, None, self.faults.burst_429, True))
        self._refresh_active()

    def clear(self) -> None:
        """Remove every fault: rates, latency, outage, queued directives and gates."""
        self._directives.clear()
        for gate in self.gates:
            gate.release()
        self.gates.clear()
        self.configure(None)

    def fail_next(
        self,
        n: int,
        *,
        kind: FaultKind = "status",
        status: int = 500,
        path: str | None = None,
    ) -> None:
        """Make the next `n` requests matching `path` (None = any) fail deterministically."""
        if kind not in _KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if kind == "status" and status == 429:
            kind = "429"
        if n > 0:
            decision = FaultDecision(kind=kind, status=429 if kind == "429" else status)
            self._directives.append(_Directive(decision, path, n))
        self._refresh_active()

    def hold(self, path: str | None, count: int | None = 1) -> Gate:
        """Install a gate that holds the next `count` matching requests (None = all)."""
        gate = Gate(path, count)
        self.gates.append(gate)
        return gate

    def gate_for(self, path: str) -> Gate | None:
        """Claim the first gate with room for `path`, if any (released gates are dropped)."""
        if not self.gates:
            return None
        self.gates = [g for g in self.gates if not g.released]
        for gate in self.gates:
            if gate.take(path):
                return gate
        return None

    def start_outage(self, duration_s: float, mode: OutageMode = "503", start_in_s: float = 0.0):
        if mode not in ("503", "reset"):
            raise ValueError("outage mode must be '503' or 'reset'")
        start = self.clock.now() + start_in_s
        self._outage = _OutageWindow(start, start + duration_s, mode)
        self._refresh_active()

    def end_outage(self) -> None:
        self._outage = None
        self._refresh_active()

    def _refresh_active(self) -> None:
        f = self.faults
        self._active = bool(
            self._directives
            or self._outage is not None
            or any(self._rates())
            or (f.latency is not None and not f.latency.is_zero)
        )

    def _rates(self) -> tuple[float, ...]:
        return self.faults._rates()

    def decide(self, path: str) -> tuple[FaultDecision | None, float]:
        """Return (fault or None, added latency in seconds) for one API request."""
        if not self._active:
            return None, 0.0
        outage = self._outage_decision()
        if outage is not None:
            return self._count(outage), 0.0
        directive = self._take_directive(path)
        if not _path_matches(self.faults.paths, path):
            return (self._count(directive) if directive else None), 0.0
        drawn = self._draw_random()
        latency = self._latency()
        decision = directive or drawn
        return (self._count(decision) if decision else None), latency

    def _outage_decision(self) -> FaultDecision | None:
        window = self._outage
        if window is None:
            return None
        now = self.clock.now()
        if now >= window.end:
            self._outage = None
            self._refresh_active()
            return None
        if now < window.start:
            return None
        if window.mode == "reset":
            return FaultDecision(kind="reset")
        return FaultDecision(kind="status", status=503)

    def _take_directive(self, path: str) -> FaultDecision | None:
        for directive in self._directives:
            if directive.from_faults and not _path_matches(self.faults.paths, path):
                continue
            if directive.path is None or _path_matches((directive.path,), path):
                directive.remaining -= 1
                if directive.remaining <= 0:
                    self._directives.remove(directive)
                    self._refresh_active()
                return directive.decision
        return None

    def _draw_random(self) -> FaultDecision | None:
        rates = self._rates()
        if not any(rates):
            return None
        roll = self._rng.random()
        outcomes = (
            FaultDecision("status", 500),
            FaultDecision("status", 502),
            FaultDecision("status", 503),
            FaultDecision("reset"),
            FaultDecision("drop_after_processing"),
        )
        threshold = 0.0
        for rate, outcome in zip(rates, outcomes, strict=True):
            threshold += rate
            if roll < threshold:
                return outcome
        return None

    def _latency(self) -> float:
        latency = self.faults.latency
        if latency is None or latency.is_zero:
            return 0.0
        return latency.sample_seconds(self._rng)

    def _count(self, decision: FaultDecision) -> FaultDecision:
        label = f"{decision.status}" if decision.kind == "status" else decision.kind
        self.injected[label] = self.injected.get(label, 0) + 1
        return decision

    def describe(self) -> dict[str, Any]:
        """Current state, for `GET /_emulator/faults`."""
        outage = self._outage
        return {
            "faults": self.faults.to_dict(),
            "pending": [
                {
                    "kind": d.decision.kind,
                    "status": d.decision.status,
                    "path": d.path,
                    "remaining": d.remaining,
                }
                for d in self._directives
            ],
            "outage": None
            if outage is None
            else {"start": outage.start, "end": outage.end, "mode": outage.mode},
            "injected": dict(self.injected),
        }


def _path_matches(patterns: tuple[str, ...], path: str) -> bool:
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


class Gate:
    """Holds the next `count` matching requests mid-execution until released, so concurrency
    tests are deterministic.

    A held request has already passed the rate limiter, taken its (customer, meter) slot and
    claimed its idempotency key, exactly like a slow request at Stripe. Tests wait for
    arrivals (`wait_arrived`, no sleeping) and then `release()`.
    """

    def __init__(self, path: str | None, count: int | None = 1) -> None:
        self.path = path
        self.count = count
        self.taken = 0
        self.arrived = 0
        self.released = False
        self._cond = threading.Condition()
        self._opened: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, path: str) -> bool:
        """Claim this gate for a request to `path` if it matches and has room left."""
        if self.released or (self.count is not None and self.taken >= self.count):
            return False
        if self.path is not None and not _path_matches((self.path,), path):
            return False
        self.taken += 1
        return True

    async def pass_through(self) -> None:
        """Server side: count the arrival, then wait until released."""
        with self._cond:
            self.arrived += 1
            self._cond.notify_all()
            if self.released:
                return
            if self._opened is None:
                self._loop = asyncio.get_running_loop()
                self._opened = asyncio.Event()
            opened = self._opened
        await opened.wait()

    def wait_arrived(self, n: int = 1, timeout: float = 10.0) -> None:
        """Block until `n` requests are held (raises TimeoutError otherwise)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.arrived >= n, timeout):
                raise TimeoutError(f"only {self.arrived} of {n} requests arrived at the gate")

    # Mirrors wait_arrived (a thread-side wait that needs its own bound).
    async def wait_arrived_async(self, n: int = 1, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await asyncio.to_thread(self.wait_arrived, n, timeout)

    def release(self) -> None:
        """Let every held (and future) request through."""
        with self._cond:
            self.released = True
            opened, loop = self._opened, self._loop
        if opened is not None and loop is not None:
            loop.call_soon_threadsafe(opened.set)

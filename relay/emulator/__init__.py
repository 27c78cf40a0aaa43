"""A faithful local emulator of Stripe's meter-event APIs (v1 events, adjustments, v2 stream,
error-report webhooks, summaries) with fault injection, a ledger and a controllable clock.

    from relay.emulator import Emulator, EmulatorConfig, Meter, Faults

    with Emulator(EmulatorConfig(rate_limit_test=None)) as emu:
        client = stripe.StripeClient(
            "sk_test_x",
            base_addresses={"api": emu.base_url, "meter_events": emu.base_url},
        )
        ...
        assert emu.counted("evt-1") == 1
"""

from relay.emulator.config import EmulatorConfig, EventDestination, Meter
from relay.emulator.emulator import Emulator
from relay.emulator.faults import Faults, Gate, Latency, Outage
from relay.emulator.ledger import LedgerEvent, LedgerSnapshot
from relay.emulator.webhooks import signature_header

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EventDestination",
    "Faults",
    "Gate",
    "Latency",
    "LedgerEvent",
    "LedgerSnapshot",
    "Meter",
    "Outage",
    "signature_header",
]

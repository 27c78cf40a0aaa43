"""Fault injection: seeded rates, one-shot directives, drops, resets, outages, latency."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
import requests
import stripe

from relay.emulator import Emulator, Faults, Latency, Outage
from tests.support.emulator import API_KEY, meter_event

METER_EVENTS = "/v1/billing/meter_events"


def _statuses(emu: Emulator, n: int, prefix: str) -> list[int]:
    with requests.Session() as c:
        c.headers["Authorization"] = f"Bearer {API_KEY}"
        return [
            c.post(
                emu.base_url + METER_EVENTS,
                data={
                    "event_name": "api_calls",
                    "identifier": f"{prefix}{i}",
                    "payload[stripe_customer_id]": "cus_1",
                    "payload[value]": "1",
                },
            ).status_code
            for i in range(n)
        ]


def test_rates_are_deterministic_for_a_seed(make_emulator: Callable[..., Emulator]) -> None:
    faults = Faults(rate_500=0.2, rate_502=0.1, rate_503=0.1)
    runs = [_statuses(make_emulator(faults=faults, seed=7), 40, "x") for _ in range(2)]
    other = _statuses(make_emulator(faults=faults, seed=8), 40, "x")

    assert runs[0] == runs[1]
    assert runs[0] != other
    assert {500, 502, 503, 200} <= set(runs[0])


def test_set_faults_reseeds(emu: Emulator) -> None:
    emu.set_faults(Faults(rate_500=0.5, seed=3))
    first = _statuses(emu, 20, "a")
    emu.set_faults(Faults(rate_500=0.5, seed=3))
    assert _statuses(emu, 20, "b") == first
    emu.clear_faults()
    assert set(_statuses(emu, 5, "c")) == {200}


def test_fail_next_fails_exactly_n(emu: Emulator) -> None:
    emu.fail_next(2, status=503)
    assert _statuses(emu, 4, "n") == [503, 503, 200, 200]
    assert emu.stats()["faults_injected"] == {"503": 2}


def test_fail_next_targets_a_path(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.fail_next(1, status=500, path="/v1/billing/meter_event_adjustments")
    client.v1.billing.meter_events.create(meter_event("p1"))
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "p1"}}
        )
    assert emu.counted("p1") == 1


def test_503_is_not_saved_under_the_key(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.fail_next(1, status=503)
    with pytest.raises(stripe.APIError) as info:
        client.v1.billing.meter_events.create(meter_event("u"), {"idempotency_key": "k"})
    assert info.value.http_status == 503
    client.v1.billing.meter_events.create(meter_event("u"), {"idempotency_key": "k"})
    assert emu.counted("u") == 1


def test_injected_429(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.fail_next(1, kind="429")
    with pytest.raises(stripe.RateLimitError):
        client.v1.billing.meter_events.create(meter_event("r"), {"idempotency_key": "k"})
    client.v1.billing.meter_events.create(meter_event("r"), {"idempotency_key": "k"})
    assert emu.counted("r") == 1
    assert emu.requests(METER_EVENTS, 429) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(409, stripe.APIError), (401, stripe.AuthenticationError)]
)
def test_injected_statuses_map_to_sdk_errors(
    client: stripe.StripeClient, emu: Emulator, status: int, error: type[Exception]
) -> None:
    emu.fail_next(1, status=status)
    with pytest.raises(error):
        client.v1.billing.meter_events.create(meter_event("s"))


def test_burst_429(emu: Emulator) -> None:
    emu.set_faults(Faults(burst_429=3))
    assert _statuses(emu, 5, "b") == [429, 429, 429, 200, 200]
    assert emu.stats()["status_429"] == 3


def test_reset_before_processing(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.fail_next(1, kind="reset")
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(meter_event("r1"), {"idempotency_key": "k"})
    assert emu.counted("r1") == 0
    client.v1.billing.meter_events.create(meter_event("r1"), {"idempotency_key": "k"})
    assert emu.counted("r1") == 1
    assert emu.stats()["resets"] == 1


def test_processed_then_dropped_counts_once_and_replays(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    emu.fail_next(1, kind="drop_after_processing")
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(
            meter_event("d1", value="6"), {"idempotency_key": "k"}
        )
    assert emu.counted("d1") == 1  # Stripe counted it; we never heard

    again = client.v1.billing.meter_events.create(
        meter_event("d1", value="6"), {"idempotency_key": "k"}
    )
    assert again.identifier == "d1"
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert emu.counted("d1") == 1
    assert emu.total("api_calls", "cus_1") == 6
    assert emu.stats()["dropped"] == 1


def test_outage_ends_with_the_emulator_clock(emu: Emulator) -> None:
    emu.start_outage(60)
    assert _statuses(emu, 2, "o") == [503, 503]
    emu.advance_clock(61)
    assert _statuses(emu, 1, "p") == [200]


def test_outage_by_reset_and_from_faults(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.set_faults(Faults(outage=Outage(duration_s=30, mode="reset")))
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(meter_event("o1"))
    emu.end_outage()
    client.v1.billing.meter_events.create(meter_event("o1"))


def test_faults_only_on_chosen_paths(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.set_faults(Faults(rate_500=1.0, paths=("/v2/*",)))
    client.v1.billing.meter_events.create(meter_event("ok"))
    with pytest.raises(stripe.APIError):
        client.v2.billing.meter_event_session.create()


def test_fixed_latency(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.set_faults(Faults(latency=Latency.fixed(150)))
    started = time.perf_counter()
    client.v1.billing.meter_events.create(meter_event("slow"))
    assert time.perf_counter() - started >= 0.15


def test_latency_distributions_are_seeded() -> None:
    uniform, normal = Latency.uniform(10, 20), Latency.normal(50, 5)
    a, b = random.Random(1), random.Random(1)
    draws = [(uniform.sample_seconds(a), normal.sample_seconds(a)) for _ in range(50)]
    assert draws == [(uniform.sample_seconds(b), normal.sample_seconds(b)) for _ in range(50)]
    assert all(0.010 <= u <= 0.020 and n >= 0 for u, n in draws)


def test_rates_must_not_exceed_one() -> None:
    with pytest.raises(ValueError):
        Faults(rate_500=0.7, rate_503=0.4)


def test_sdk_retries_recover_from_transient_faults(emu: Emulator) -> None:
    """With SDK retries on, a 503 then success counts the event once."""
    retrying = stripe.StripeClient(
        API_KEY, base_addresses={"api": emu.base_url}, max_network_retries=2
    )
    emu.fail_next(1, status=503)
    retrying.v1.billing.meter_events.create(meter_event("retry"))
    assert emu.counted("retry") == 1

"""Meters as a Stripe account has them: per account, listed with paging and a status filter,
created, deactivated and reactivated at run time, read-protected from restricted keys; the
event destinations list; custom payload keys and pre-aggregated windows in the ledger."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from relay.emulator import Emulator, EventDestination, Meter
from tests.support.emulator import make_client, stream_event

RESTRICTED = "rk_test_meters_suite"


def _admin(emu: Emulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (the emulator on 127.0.0.1)
        emu.base_url + "/_emulator" + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_meters_are_per_account(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.add_meter(Meter("tokens", id="mtr_tokens"), account="acct_other")
    platform = client.v1.billing.meters.list()
    connected = client.v1.billing.meters.list(options={"stripe_account": "acct_other"})
    assert [m.id for m in platform.data] == ["mtr_api_calls"]
    assert {m.id for m in connected.data} == {"mtr_api_calls", "mtr_tokens"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.retrieve("mtr_tokens")


def test_list_pages_newest_first_with_status_filter(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    for i in range(25):
        emu.add_meter(Meter(f"m{i:02}", active=i % 5 != 0))
    first = client.v1.billing.meters.list({"limit": 10})
    assert first.has_more and first.data[0].id == "mtr_m24"
    seen = [m.id for m in first.data]
    page = first
    while page.has_more:
        page = client.v1.billing.meters.list({"limit": 10, "starting_after": page.data[-1].id})
        seen += [m.id for m in page.data]
    assert len(seen) == len(set(seen)) == 26
    inactive = client.v1.billing.meters.list({"status": "inactive", "limit": 100})
    assert {m.id for m in inactive.data} == {f"mtr_m{i:02}" for i in range(0, 25, 5)}
    assert all(m.status == "inactive" for m in inactive.data)
    active = client.v1.billing.meters.list({"status": "active", "limit": 100})
    assert len(active.data) == 21 and not active.has_more
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.list({"limit": 101})


def test_deactivate_and_reactivate_at_run_time(emu: Emulator, client: stripe.StripeClient) -> None:
    assert emu.deactivate_meter("mtr_api_calls")
    assert client.v1.billing.meters.retrieve("mtr_api_calls").status == "inactive"
    client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_1", "value": "3"}}
    )
    assert emu.flush_error_reports()
    assert emu.total("api_calls", "cus_1") == 0  # dropped: archived_meter
    assert emu.events()[-1]["data"]["reason"]["error_types"][0]["code"] == "archived_meter"
    # Stripe's own endpoint and the admin endpoint both reactivate.
    meter = client.v1.billing.meters.reactivate("mtr_api_calls")
    assert meter.status == "active"
    client.v1.billing.meters.deactivate("mtr_api_calls")
    assert _admin(emu, "/meters/mtr_api_calls/reactivate", {})["active"] is True
    client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_1", "value": "3"}}
    )
    assert emu.total("api_calls", "cus_1") == 3


def test_admin_adds_a_meter_to_one_account(emu: Emulator, client: stripe.StripeClient) -> None:
    _admin(emu, "/meters", {"event_name": "late", "account": "acct_late", "value_key": "n"})
    connected = client.v1.billing.meters.list(options={"stripe_account": "acct_late"})
    assert "mtr_late" in {m.id for m in connected.data}
    assert "mtr_late" not in {m.id for m in client.v1.billing.meters.list().data}


def test_restricted_key_gets_403_on_meter_reads_but_sends(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(restricted_keys=(RESTRICTED,))
    client = make_client(emu, api_key=RESTRICTED)
    with pytest.raises(stripe.PermissionError) as refused:
        client.v1.billing.meters.list()
    assert RESTRICTED not in str(refused.value)  # the key is masked
    with pytest.raises(stripe.PermissionError):
        client.v2.core.event_destinations.list()
    client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_1", "value": "2"}}
    )
    assert emu.total("api_calls", "cus_1") == 2


def test_event_destinations_default_configured_and_set(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(webhook_url="http://127.0.0.1:9/hook")
    client = make_client(emu)
    [default] = client.v2.core.event_destinations.list().data
    assert default.object == "v2.core.event_destination"
    assert default.status == "enabled" and default.type == "webhook_endpoint"
    assert set(default.enabled_events) == {
        "v1.billing.meter.error_report_triggered",
        "v1.billing.meter.no_meter_found",
    }
    assert default.webhook_endpoint is not None
    assert default.webhook_endpoint.url == "http://127.0.0.1:9/hook"
    emu.set_event_destinations([EventDestination(status="disabled", events_from=("other",))])
    [disabled] = client.v2.core.event_destinations.list().data
    assert disabled.status == "disabled" and disabled.events_from == ["other"]
    _admin(emu, "/event_destinations", {"destinations": []})
    assert client.v2.core.event_destinations.list().data == []


@pytest.mark.parametrize("via", ["v1", "v2_stream"])
def test_custom_keys_billed_and_default_keys_dropped(
    make_emulator: Callable[..., Emulator], via: str
) -> None:
    emu = make_emulator(meters=(Meter("tokens", customer_key="customer_id", value_key="n"),))
    client = make_client(emu)
    good = {"customer_id": "cus_1", "n": "7"}
    wrong = {"stripe_customer_id": "cus_1", "value": "5"}
    for identifier, payload in (("good", good), ("wrong", wrong)):
        if via == "v1":
            params: Any = {"event_name": "tokens", "identifier": identifier, "payload": payload}
            client.v1.billing.meter_events.create(params)
        else:
            event: Any = {**stream_event(identifier, event_name="tokens"), "payload": payload}
            token = client.v2.billing.meter_event_session.create().authentication_token
            client.v2.billing.meter_event_stream.create({"events": [event]}, {"api_key": token})
    emu.flush_error_reports()
    assert emu.total("tokens", "cus_1") == 7
    [rejected] = emu.ledger().rejected
    assert (rejected.identifier, rejected.error_code) == (
        "wrong",
        "meter_event_no_customer_defined",
    )

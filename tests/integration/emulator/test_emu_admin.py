"""The `/_emulator/*` admin endpoints (what a relay in another process would use)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import stripe

from relay.emulator import Emulator
from tests.support.emulator import API_KEY, meter_event


class Admin:
    """requests against `/_emulator/...` of one emulator."""

    def __init__(self, base_url: str) -> None:
        self.base = f"{base_url}/_emulator"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.base + path, **kwargs)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.base + path)


@pytest.fixture
def admin(emu: Emulator) -> Admin:
    return Admin(emu.base_url)


def test_health_and_request_id(admin: Admin) -> None:
    response = admin.get("/health")
    assert response.json() == {"ok": True}
    assert response.headers["Request-Id"].startswith("req_")


def test_ledger_stats_and_reset(emu: Emulator, client: stripe.StripeClient, admin: Admin) -> None:
    client.v1.billing.meter_events.create(meter_event("a1", value="5"))

    ledger = admin.get("/ledger").json()
    assert ledger["totals"] == [
        {"account": "acct_emulator", "event_name": "api_calls", "customer": "cus_1", "value": 5}
    ]
    assert [e["identifier"] for e in ledger["events"]] == ["a1"]
    stats = admin.get("/stats").json()
    assert stats["requests"]["POST /v1/billing/meter_events"] == {"200": 1}

    assert admin.post("/reset").json() == {"ok": True}
    assert emu.counted("a1") == 0
    assert admin.get("/ledger").json()["events"] == []
    client.v1.billing.meter_events.create(meter_event("a1", value="5"))  # identifier free again


def test_faults_over_http(emu: Emulator, client: stripe.StripeClient, admin: Admin) -> None:
    state = admin.post(
        "/faults", json={"rate_500": 1.0, "paths": ["/v1/billing/meter_events"], "latency_ms": 1}
    ).json()
    assert state["faults"]["rate_500"] == 1.0
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_events.create(meter_event("f1"))
    admin.delete("/faults")
    client.v1.billing.meter_events.create(meter_event("f1"))

    admin.post("/fail_next", json={"n": 1, "kind": "drop_after_processing"})
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(meter_event("f2"))
    assert emu.counted("f2") == 1
    assert admin.get("/faults").json()["injected"] == {"500": 1, "drop_after_processing": 1}

    assert admin.post("/faults", json={"rate_500": 2}).status_code == 400
    assert admin.post("/fail_next", json={"kind": "explode"}).status_code == 400


def test_outage_over_http(client: stripe.StripeClient, admin: Admin) -> None:
    admin.post("/outage", json={"duration_s": 60})
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_events.create(meter_event("o"))
    admin.delete("/outage")
    client.v1.billing.meter_events.create(meter_event("o"))


def test_clock_over_http(emu: Emulator, admin: Admin) -> None:
    before = admin.get("/clock").json()["now"]
    after = admin.post("/clock", json={"advance_seconds": 86400}).json()
    assert after["now"] - before >= 86400
    assert after["offset_seconds"] == pytest.approx(86400)
    assert emu.now() >= after["now"]


def test_meters_customers_and_reports_over_http(
    emu: Emulator, client: stripe.StripeClient, admin: Admin
) -> None:
    assert admin.post("/meters", json={"event_name": "tokens", "aggregation": "count"}).json() == {
        "id": "mtr_tokens",
        "event_name": "tokens",
    }
    client.v1.billing.meter_events.create(meter_event("t1", event_name="tokens"))
    assert emu.total("tokens", "cus_1") == 1

    client.v1.billing.meter_events.create(meter_event("x1", customer="acme"))
    assert emu.counted("x1") == 0  # unknown customer: rejected asynchronously
    admin.post("/customers", json={"customer": "acme"})
    client.v1.billing.meter_events.create(meter_event("x2", customer="acme"))
    assert emu.counted("x2") == 1

    created = admin.post("/flush_error_reports").json()["created"]
    assert len(created) == 1
    assert [e["id"] for e in admin.get("/events").json()["data"]] == created


def test_stream_answers_an_empty_object(emu: Emulator, client: stripe.StripeClient) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    response = requests.post(
        f"{emu.base_url}/v2/billing/meter_event_stream",
        json={
            "events": [
                {
                    "event_name": "api_calls",
                    "payload": {"stripe_customer_id": "cus_1", "value": "1"},
                }
            ]
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (response.status_code, response.json()) == (200, {})
    assert response.headers["Request-Id"].startswith("req_")

    bad = requests.post(
        f"{emu.base_url}/v2/billing/meter_event_stream",
        json={"events": []},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert bad.status_code == 401
    assert set(bad.json()["error"]) == {"type", "code", "message"}


def test_every_admin_example_in_the_readme_works(emu: Emulator) -> None:
    """The README's curl lines against /_emulator/ are run as written (method, path, body):
    each must be answered 200 without an error, so the examples keep matching the endpoints."""
    import re
    import shlex
    from pathlib import Path

    readme = Path(__file__).parents[3] / "relay" / "emulator" / "README.md"
    examples = [
        shlex.split(line)
        for line in readme.read_text().splitlines()
        if line.startswith("curl ") and "/_emulator/" in line
    ]
    assert len(examples) >= 6
    for words in examples:
        method = next((w[2:] for w in words if w.startswith("-X")), None)
        body = words[words.index("-d") + 1] if "-d" in words else None
        url = next(w for w in words if "/_emulator/" in w)
        path = re.sub(r"^.*?/_emulator", "", url)
        answer = requests.request(
            method or ("POST" if body else "GET"), f"{emu.base_url}/_emulator{path}", data=body
        )
        assert answer.status_code == 200 and "error" not in answer.json(), (words, answer.text)

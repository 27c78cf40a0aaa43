"""deploy/monitoring: the alert rules and the dashboard parse, pass promtool, and every metric
they use is served by a running relay's /metrics."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay.emulator import Emulator
from relay.server.http_server import make_app
from tests.support.console import listening, served
from tests.support.relay import insert_usage, make_settings, running_relay, states

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "deploy" / "monitoring"
RUNBOOKS = ROOT / "docs" / "operations.md"
DEPLOY_README = ROOT / "deploy" / "README.md"
GROUPING = ("cluster", "namespace", "job")
AGGREGATION = re.compile(r"\b(max|min|sum|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(")
METRIC = re.compile(r"\boutbox_relay_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


# Defined by work merged separately (the commit-to-accepted histogram); listed here so this
# test says so instead of failing, and fails once the name is served but still listed.
def _rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert doc["kind"] == "PrometheusRule"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _used_metrics() -> set[str]:
    names = set()
    for expr in [r["expr"] for r in _rules()] + _dashboard_exprs():
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                name = name.removesuffix(suffix)
            names.add(name)
    return names


def test_manifests_parse_and_name_the_relay() -> None:
    kinds = {}
    for path in MONITORING.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        if path.name != "rules-test.yaml":  # promtool's test cases, not a manifest
            kinds[doc["kind"]] = doc
    assert {"PrometheusRule", "PodMonitor", "ServiceMonitor", "Kustomization"} <= kinds.keys()
    relay = {"app.kubernetes.io/name": "outbox-relay", "app.kubernetes.io/component": "relay"}
    assert kinds["PodMonitor"]["spec"]["selector"]["matchLabels"] == relay
    assert kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"] == relay
    assert kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    alerts = {r["alert"] for r in _rules()}
    assert {
        "OutboxRelayLagging",
        "OutboxRelayFailedRows",
        "OutboxRelayRejectedRising",
        "OutboxRelayStripeAuthPaused",
        "OutboxRelayNoLiveRelay",
        "OutboxRelayDrift",
    } <= alerts
    for rule in _rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_aggregation_keeps_the_deployment_apart() -> None:
    """No global max()/sum(): staging and production on one Prometheus must not merge."""
    for expr in [r["expr"] for r in _rules()] + _dashboard_exprs():
        for match in AGGREGATION.finditer(expr):
            by = [label.strip() for label in (match.group(2) or "").split(",")]
            assert all(label in by for label in GROUPING), (match.group(0), expr)
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert set(GROUPING) <= variables
    for expr in _dashboard_exprs():
        assert 'namespace=~"$namespace"' in expr, expr


def test_every_alert_has_a_runbook_and_a_promtool_case() -> None:
    headings = set(re.findall(r"^### (\w+)$", RUNBOOKS.read_text(), re.MULTILINE))
    cases = yaml.safe_load((MONITORING / "rules-test.yaml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in cases
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    table = re.findall(r"^\| `OutboxRelay.*$", DEPLOY_README.read_text(), re.MULTILINE)
    listed = {name for line in table for name in re.findall(r"`(OutboxRelay\w+)`", line)}
    for rule in _rules():
        alert = rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith(f"docs/operations.md#{alert.lower()}")
        assert alert in listed, f"{alert} missing from deploy/README.md's table of alerts"
        if alert != "OutboxRelayNoLiveRelay":  # it also fires with no series, so no namespace
            assert rule["annotations"]["summary"].startswith("{{ $labels.namespace }}: "), alert
        assert alert in headings, f"no '### {alert}' runbook in docs/operations.md"
        assert alert in firing, f"no promtool case where {alert} fires"
    assert "OutboxRelayWebhookBadSignature" in firing


def test_kustomize_labels_the_monitors_for_kube_prometheus_stack(tmp_path: Path) -> None:
    """`release: kube-prometheus-stack` on the rule and the monitor (not their pod selectors),
    and an overlay changes it."""
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["labels"] == [
        {"pairs": {"release": "kube-prometheus-stack"}, "includeSelectors": False}
    ]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the rendering half needs `kubectl kustomize`")
    shutil.copytree(MONITORING, tmp_path / "base")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [base]\nlabels:\n  - pairs: {release: my-prometheus}\n"
        "    includeSelectors: false\n"
    )
    for where, release in (
        (tmp_path / "base", "kube-prometheus-stack"),
        (tmp_path, "my-prometheus"),
    ):
        rendered = subprocess.run(
            [kubectl, "kustomize", str(where)], capture_output=True, text=True, check=True
        ).stdout
        docs = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
        assert {"PrometheusRule", "PodMonitor"} == docs.keys()
        for doc in docs.values():
            assert doc["metadata"]["labels"]["release"] == release
            assert doc["metadata"]["namespace"] == "outbox-relay"
        selector = docs["PodMonitor"]["spec"]["selector"]["matchLabels"]
        assert "release" not in selector


def test_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    """`promtool check rules` on the PrometheusRule's groups, then `promtool test rules`
    (deploy/monitoring/rules-test.yaml): each alert fires on the series meant for it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but promtool is missing: .ci/run installs it (apt prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus); CI runs this check")
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    shutil.copy(MONITORING / "rules-test.yaml", tmp_path)
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "rules-test.yaml"]):
        result = subprocess.run(
            [promtool, *command], capture_output=True, text=True, check=False, cwd=tmp_path
        )
        print(result.stdout)
        assert result.returncode == 0, result.stdout + result.stderr


async def test_every_metric_used_is_served(database_url: str, emulator: Emulator) -> None:
    """A relay reports some usage; its /metrics then carries every name the alert rules and
    the dashboard use, and the table gauges match the database."""
    insert_usage(database_url, 20, customers=4)
    settings = make_settings(database_url, emulator)
    async with running_relay(settings) as running:
        await running.until(lambda: _all_accepted(database_url))
        relay = running.relay
        app = make_app(relay, relay.store, relay.sender.client, None)
        async with listening(app) as url, aiohttp.ClientSession() as session:
            await _post(session, f"{url}/webhooks/stripe")  # 503: no webhook secret here
            text = await _text(session, f"{url}/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    served_names = {name.removesuffix(sfx) for name, _ in samples for sfx in ("", *SUFFIXES)}
    missing = _used_metrics() - served_names
    assert not missing, f"used by rules/dashboard, not served: {missing}"
    assert samples[("outbox_relay_backlog_rows", (("state", "accepted"),))] == 20
    assert samples[("outbox_relay_backlog_rows", (("state", "pending"),))] == 0
    assert samples[("outbox_relay_oldest_unsent_age_seconds", ())] == 0
    assert samples[("outbox_relay_live_relays", ())] == 1
    assert samples[("outbox_relay_account_auth_paused", (("account", "platform"),))] == 0
    build = [k for k in samples if k[0] == "outbox_relay_build_info"]
    assert (("mode", "v1"), ("version", "0.1.0")) in [labels for _, labels in build]


async def _text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def _post(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, data=b"{}") as response:
        return response.status


async def _all_accepted(database_url: str) -> bool:
    return states(database_url) == {"accepted": 20}


async def test_lag_counts_rows_in_backoff(database_url: str, emulator: Emulator) -> None:
    """A row retrying after a 503 is not due (available_at ahead), yet it is 55 s behind:
    the lag gauge measures from created_at, not from when the row is next due."""
    insert_usage(database_url, 3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE meter_event_outbox SET attempts = 1, last_error_code = 'http_503',"
            " created_at = now() - interval '55 seconds', available_at = now() + interval '1 hour'"
        )
    async with served(database_url, emulator) as app, aiohttp.ClientSession() as session:
        text = await _text(session, f"{app.url}/metrics")
    (age,) = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "outbox_relay_oldest_unsent_age_seconds"
    ]
    assert age >= 55

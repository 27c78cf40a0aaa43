"""The way out to Stripe (relay/stripe/egress.py): which proxy an origin takes, what a bad
setting says (one line, exit 2, never the value), and what `doctor` and the start line show."""

from pathlib import Path

import pytest

from relay.core.errors import CONFIG_EXIT, ConfigError
from relay.stripe.egress import Egress, parse_proxy


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_setting_wins_over_https_proxy_and_no_proxy_applies(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.corp")
    egress = Egress.from_environment("http://setting-proxy:8080")
    proxy = egress.proxy_for("https", "api.stripe.com")
    assert proxy is not None and (proxy.host, proxy.port) == ("setting-proxy", 8080)
    assert egress.proxy_for("https", "internal.example") is None
    assert egress.proxy_for("https", "stripe.corp") is None
    assert egress.proxy_for("http", "api.stripe.com") is None  # plain http: local servers
    env_proxy = Egress.from_environment().proxy_for("https", "api.stripe.com")
    assert env_proxy is not None and env_proxy.host == "env-proxy"
    assert Egress.from_environment("").proxy is None  # empty setting: no proxy at all


def test_credentials_become_a_header_and_stay_out_of_descriptions():
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy:3128", "OUTBOX_STRIPE_PROXY")
    assert proxy.authorization == "Basic dXNAZXI6cDpzcw=="  # base64("us@er:p:ss")
    described = " ".join(Egress(proxy, "OUTBOX_STRIPE_PROXY", None, "add").describe())
    assert "p%3Ass" not in described and "us%40er" not in described
    assert "http://proxy:3128 (from OUTBOX_STRIPE_PROXY)" in described
    assert "s3" not in repr(proxy) and "p%3Ass" not in repr(proxy)


@pytest.mark.parametrize("url", ["socks5://secret@proxy:1080", "http://:3128", "http://h:99999"])
def test_a_bad_proxy_url_is_one_line_without_the_value(url: str):
    with pytest.raises(ConfigError) as caught:
        Egress.from_environment(url)
    message = str(caught.value)
    assert "OUTBOX_STRIPE_PROXY" in message and "\n" not in message and url not in message
    assert caught.value.exit_code == CONFIG_EXIT


def test_a_bad_ca_file_is_one_line(tmp_path: Path):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    for path in (garbage, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError) as caught:
            Egress.from_environment(None, path).ssl_context()
        message = str(caught.value)
        assert message.startswith("OUTBOX_STRIPE_CA_FILE: cannot use it as CA certificates")
        assert "\n" not in message


def test_trust_is_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ca = tmp_path / "corp.pem"
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    assert Egress.from_environment(None, ca, "add").describe()[1] == (
        "stripe's CA bundle + SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        f" + OUTBOX_STRIPE_CA_FILE={ca}"
    )
    assert Egress.from_environment(None, ca, "replace").describe()[1] == (
        f"OUTBOX_STRIPE_CA_FILE={ca}"
    )
    assert Egress.from_environment().describe() == [
        "none (direct)",
        "stripe's CA bundle + SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    ]

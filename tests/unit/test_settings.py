"""Settings validation: bounds, NaN and infinity refused, one line naming the variable and
never the value (a database URL holds a password)."""

import math
from pathlib import Path

import pytest

from relay.core.config import load
from relay.core.errors import ConfigError, database_error

PASSWORD = "hunter2-Secret"
URL = f"postgresql://relay:{PASSWORD}@db:5432/app"


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one-line refusal for these variables (set in the environment, as in production)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert "\n" not in message and PASSWORD not in message
    return message


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("OUTBOX_", "STRIPE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", URL)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "NaN", "inf", "-inf", "1e400", "fast", ""])
def test_rate_limit_must_be_a_positive_finite_number(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    assert refusal(monkeypatch, OUTBOX_RATE_LIMIT=value).startswith(
        "invalid configuration: OUTBOX_RATE_LIMIT: "
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTBOX_BATCH_SIZE", "0"),
        ("OUTBOX_BATCH_SIZE", "10001"),
        ("OUTBOX_CONCURRENCY", "0"),
        ("OUTBOX_POLL_INTERVAL", "0"),
        ("OUTBOX_POLL_INTERVAL", "nan"),
        ("OUTBOX_REQUEST_TIMEOUT", "-1"),
        ("OUTBOX_MAX_ATTEMPTS", "0"),
        ("OUTBOX_MAX_ATTEMPTS", "ten"),
        ("OUTBOX_DEDUP_WINDOW_HOURS", "24"),
        ("OUTBOX_SHUTDOWN_GRACE", "inf"),
        ("OUTBOX_RETENTION_DAYS", "0"),
        ("OUTBOX_HTTP_PORT", "65536"),
        ("OUTBOX_HTTP_HOST", ""),
        ("OUTBOX_HTTP_READ_TIMEOUT", "0"),
        ("OUTBOX_HTTP_MAX_CONNECTIONS", "1"),
        ("OUTBOX_RELAY_ID", ""),
        ("OUTBOX_RELAY_ID", "two words"),
        ("OUTBOX_RELAY_ID", "x" * 201),
        ("OUTBOX_STRIPE_API_MODE", "v3"),
    ],
)
def test_each_setting_is_bounded_and_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    assert f"{variable}: " in refusal(monkeypatch, **{variable: value})


def test_every_problem_is_listed_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, OUTBOX_RATE_LIMIT="0", OUTBOX_BATCH_SIZE="0")
    assert "OUTBOX_RATE_LIMIT" in message and "OUTBOX_BATCH_SIZE" in message


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://relay:{PASSWORD}@db/app",
        f"postgresql://relay:{PASSWORD}@db:port/app",
        f"postgresql://relay:{PASSWORD}@db:5432/app?bad option",
        f"relay:{PASSWORD}@db/app",
    ],
)
def test_a_malformed_database_url_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    assert "OUTBOX_DATABASE_URL" in refusal(monkeypatch, OUTBOX_DATABASE_URL=url)


def test_the_lease_must_outlive_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, OUTBOX_LEASE_SECONDS="10", OUTBOX_REQUEST_TIMEOUT="6")
    assert "OUTBOX_LEASE_SECONDS" in message


def test_key_file_must_be_readable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = refusal(monkeypatch, STRIPE_API_KEY_FILE=str(tmp_path / "absent"))
    assert "STRIPE_API_KEY_FILE" in missing
    assert "STRIPE_API_KEY_FILE" in refusal(monkeypatch, STRIPE_API_KEY_FILE=str(tmp_path))


def test_key_file_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk_test_abc\n")
    monkeypatch.setenv("STRIPE_API_KEY_FILE", str(key))
    assert load().api_key() == "sk_test_abc"


def test_defaults_are_valid_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(rate_limit=40.0, batch_size=None)  # None: flag not given
    assert settings.rate_limit == 40.0 and settings.effective_batch_size() == 100  # v1
    assert math.isfinite(settings.http_read_timeout) and settings.relay_id
    with pytest.raises(ConfigError, match="OUTBOX_RATE_LIMIT"):
        load(rate_limit=float("nan"))


@pytest.mark.parametrize(
    ("libpq_says", "exit_code"),
    [
        ('connection failed: FATAL:  database "app" does not exist', 2),
        ('FATAL:  password authentication failed for user "relay"', 2),
        ("connection failed: Connection refused\n\tIs the server running on that host?", 1),
        ("failed to resolve host 'db': Name or service not known", 1),
    ],
)
def test_database_failures_split_into_fix_the_url_and_try_again(
    libpq_says: str, exit_code: int
) -> None:
    failure = database_error(OSError(f"{libpq_says} postgresql://relay:{PASSWORD}@db/app"))
    assert failure.exit_code == exit_code
    assert "\n" not in str(failure) and PASSWORD not in str(failure)


STRONG = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("   ", "shorter than 32"),
        ("x", "shorter than 32"),
        (STRONG[:31], "shorter than 32"),
        ("z" * 32, "one repeated character"),
        (" " + STRONG, "surrounding spaces"),
        (STRONG + "\t", "control characters"),
    ],
)
def test_a_guessable_console_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, token: str, problem: str
) -> None:
    message = refusal(monkeypatch, OUTBOX_CONSOLE_TOKEN=token)
    assert message.startswith("invalid configuration: OUTBOX_CONSOLE_TOKEN ")
    assert problem in message and "openssl rand -hex 32" in message
    assert len(token.strip()) < 2 or token.strip() not in message


def test_one_trailing_newline_is_stripped_from_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_CONSOLE_TOKEN", STRONG + "\n")
    token = load().console_token
    assert token is not None and token.get_secret_value() == STRONG


def test_every_secret_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {"url": URL, "webhook": "whsec_fromfile", "token": STRONG}
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")  # as `echo value > file` writes it
    monkeypatch.delenv("OUTBOX_DATABASE_URL")
    monkeypatch.setenv("OUTBOX_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_FILE", str(tmp_path / "webhook"))
    monkeypatch.setenv("OUTBOX_CONSOLE_TOKEN_FILE", str(tmp_path / "token"))
    settings = load()
    assert settings.database_url == URL
    assert settings.stripe_webhook_secret is not None
    assert settings.stripe_webhook_secret.get_secret_value() == "whsec_fromfile"
    assert settings.console_token is not None
    assert settings.console_token.get_secret_value() == STRONG


def test_a_secret_file_that_holds_a_bad_url_is_named_not_quoted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "url").write_text(f"mysql://relay:{PASSWORD}@db/app")
    monkeypatch.delenv("OUTBOX_DATABASE_URL")
    message = refusal(monkeypatch, OUTBOX_DATABASE_URL_FILE=str(tmp_path / "url"))
    assert "OUTBOX_DATABASE_URL_FILE" in message

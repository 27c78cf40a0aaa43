"""Relay settings: environment variables (names in docs/configuration.md), overridden by CLI flags.

Secrets are `SecretStr`, so printing or logging the settings never shows them. Every number has
bounds and refuses NaN and infinity: a rate of 0 divided by zero on every send and a negative
one removed pacing. `load` turns pydantic's errors into one line that names the variable and
never echoes the value (a malformed database URL holds a password).
"""

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.dburl import psycopg_url
from relay.core.errors import ConfigError

CONSOLE_TOKEN_MIN = 32


def strip_newline(value: str) -> str:
    """One trailing line break removed: what `echo secret > file` and editors add."""
    return value.removesuffix("\n").removesuffix("\r")


def token_problem(token: str) -> str | None:
    """Why a console token is refused (never quoting it), or None."""
    if not token:
        return "is empty"
    if len(token) < CONSOLE_TOKEN_MIN:
        return f"is shorter than {CONSOLE_TOKEN_MIN} characters"
    if len(set(token)) == 1:
        return "is one repeated character"
    if not token.isprintable() or token != token.strip():
        return "has control characters or surrounding spaces"
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_HOSTS = "localhost,127.0.0.1,[::1]"


def ip_networks(spec: str) -> list[Network]:
    """`10.0.0.0/8, 192.168.1.7` -> networks; ValueError naming the bad entry."""
    networks = []
    for entry in (part.strip() for part in spec.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
    return networks


def host_names(spec: str) -> frozenset[str]:
    """`localhost, console.example.com` -> lower-case names (ports are not part of them)."""
    return frozenset(name.strip().lower() for name in spec.split(",") if name.strip())


def read_secret(path: Path, variable: str) -> str:
    """A secret file's content, without its trailing line break; never quoted in errors."""
    try:
        return strip_newline(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{variable}: cannot read {path} ({type(err).__name__})") from None


def postgres_only(url: str) -> str:
    """The URL unchanged if it is a PostgreSQL URL; a ValueError that never quotes it else."""
    if url:
        psycopg_url(url)  # raises a clear ValueError on a non-PostgreSQL URL
        try:
            params = conninfo_to_dict(psycopg_url(url))
        except Exception:  # libpq's message may quote the URL: never repeat it
            params = {"port": "invalid"}
        if not all(p.isdigit() for p in str(params.get("port", "5432")).split(",")):
            raise ValueError(
                "not a valid PostgreSQL URL (postgresql://user:password@host:5432/dbname)"
            )
    return url


class Settings(BaseSettings):
    """Everything `outbox-relay` reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOX_", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    database_url: str = Field(default="", description="PostgreSQL URL (postgresql://...)")
    database_url_file: Path | None = Field(
        default=None, description="Read the PostgreSQL URL from this file (keeps it out of ps)"
    )
    stripe_api_key: SecretStr | None = Field(default=None, validation_alias="STRIPE_API_KEY")
    stripe_api_key_file: Path | None = Field(default=None, validation_alias="STRIPE_API_KEY_FILE")
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias="STRIPE_WEBHOOK_SECRET"
    )
    stripe_webhook_secret_file: Path | None = Field(
        default=None, validation_alias="STRIPE_WEBHOOK_SECRET_FILE"
    )
    stripe_api_base: str | None = Field(
        default=None, description="Point every Stripe host at this base URL (e.g. the emulator)"
    )
    stripe_api_mode: Literal["v1", "v2-stream"] = "v1"
    stripe_client: Literal["lean", "sdk"] = Field(
        default="lean",
        description="lean: meter events on a minimal HTTP/1.1 client; sdk: the stripe SDK",
    )
    stripe_proxy: SecretStr | None = Field(
        default=None,
        description="HTTP proxy for Stripe (http://[user:pass@]host:port, CONNECT); "
        "default HTTPS_PROXY; NO_PROXY applies",
    )
    stripe_ca_file: Path | None = Field(
        default=None, description="PEM CA certificates to trust for Stripe (an egress proxy's)"
    )
    stripe_ca_mode: Literal["add", "replace"] = Field(
        default="add",
        description="add: OUTBOX_STRIPE_CA_FILE beside stripe's bundle; replace: it alone",
    )

    rate_limit: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Stripe calls per second; default 1000 live, 25 test keys",
    )
    rate_limit_scope: Literal["account", "relay"] = Field(
        default="account",
        description="account: the limit is shared by the relays running on this database",
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=10_000, description="Rows held at once; default: the rate x 0.4 s"
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=10_000, description="Rows per claim; default 100 v1, 1,000 v2"
    )
    stream_linger_ms: float = Field(
        default=20.0, ge=0, le=1000, description="v2 stream: wait this long to fill a call"
    )
    poll_interval: float = Field(default=1.0, gt=0, le=300)
    poll_only: bool = False
    database_prepare: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Server-side prepared statements: auto turns them off behind a pooler "
        "(PgBouncer), on/off force them",
    )
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    max_attempts: int = Field(default=25, ge=1, le=1000)
    dedup_window_hours: float = Field(
        default=20.0, gt=0, lt=24, description="Stop retrying before Stripe's >= 24 h dedup window"
    )
    auth_probe_interval: float = Field(
        default=10.0, gt=0, le=3600, description="After a 401/403, retry one refused row after this"
    )
    auth_probe_max_interval: float = Field(
        default=300.0, gt=0, le=86_400, description="... doubling per refusal up to this"
    )
    clock_margin: float = Field(
        default=60.0,
        ge=1,
        le=120,
        description="Narrow Stripe's timestamp window by this at both ends (s); clock skew "
        "beyond it is reported",
    )
    read_only_grace: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A database read-only this long fails /healthz (s), so the relay restarts",
    )
    outage_threshold: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="After N calls in a row got no answer or a 502/503/504, only probe (0: off)",
    )
    outage_probe_interval: float = Field(
        default=2.0, gt=0, le=3600, description="While Stripe is out, one probe call after this"
    )
    outage_probe_max_interval: float = Field(
        default=30.0, gt=0, le=3600, description="... doubling per failed probe up to this"
    )
    # Timing of the relay's own loops (seconds). Defaults suit production; tests shorten them
    # instead of waiting on them.
    hint_recheck: float = Field(
        default=0.02,
        gt=0,
        le=60,
        description="After the last claim that took rows, look again this soon (coalesced hints)",
    )
    outcome_flush_delay: float = Field(
        default=0.005, ge=0, le=10, description="Let an outcome batch fill this long before writing"
    )
    upkeep_interval: float = Field(
        default=10.0, gt=0, le=3600, description="Fold the status counters"
    )
    heartbeat_interval: float = Field(
        default=1.0, gt=0, le=60, description="Announce this relay (rate share) this often"
    )
    relay_stale_after: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="A relay not seen for this long no longer holds a share",
    )
    shutdown_grace: float = Field(default=20.0, ge=0, le=3600)
    retention_days: float = Field(default=35.0, gt=0, le=36_500)
    wait_for_schema: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="Seconds `run` waits for `migrate` before giving up",
    )
    meter_refresh_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Read the Stripe meters this often (also at start and when a row needs it)",
    )
    meter_keys: str | None = Field(
        default=None,
        max_length=10_000,
        description="Payload keys per event name for keys that cannot read meters: "
        "event_name=customer_key:value_key;...",
    )
    read_rate_limit: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Stripe reads per second (meter lists, summaries); default half of Stripe's "
        "read limit: 50 live, 12.5 test",
    )
    summary_settle_seconds: float = Field(
        default=1800.0,
        ge=0,
        le=172_800,
        description="Seconds Stripe's event summaries are given to settle (they are eventually "
        "consistent) before an hour is compared with them",
    )
    confirm_read_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Share of OUTBOX_READ_RATE_LIMIT the confirmation against Stripe's summaries "
        "may use",
    )
    confirm_window_seconds: float = Field(
        default=3600.0,
        ge=1,
        le=86_400,
        description="Accepted rows are taken up for confirmation in windows of this length "
        "(each group is written once per window)",
    )
    http_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    http_port: int = Field(default=8080, ge=0, le=65535)
    # HTTP server limits (slow or hostile clients must not starve /healthz and /readyz)
    http_read_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a client has for headers, then body"
    )
    http_max_connections: int = Field(
        default=1000, ge=8, le=1_000_000, description="Open HTTP connections at most"
    )
    relay_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x20\x7f]+$",  # printable, no spaces: it names leases and logs
    )
    otel: bool = Field(
        default=False,
        description="Spans and metrics by OTLP (the otel extra; OTEL_* variables set the exporter)",
    )
    console: bool = Field(default=True, description="Serve the web console at /console")
    console_token: SecretStr | None = Field(
        default=None, description="Require this token (bearer header or login cookie)"
    )
    console_token_file: Path | None = Field(
        default=None, description="Read the console token from this file"
    )
    console_actions: bool = Field(
        default=False, description="Allow retry/cancel from the console (needs a token)"
    )
    console_trusted_proxies: str = Field(
        default="",
        description="Believe X-Forwarded-Proto/-For from these IPs or networks (comma-separated)",
    )
    console_allowed_hosts: str = Field(
        default=LOOPBACK_HOSTS,
        min_length=1,
        description="Host header names the console answers (comma-separated; DNS rebinding)",
    )

    @field_validator("console_trusted_proxies")
    @classmethod
    def _networks(cls, spec: str) -> str:
        ip_networks(spec)
        return spec

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str) -> str:
        return postgres_only(url)

    @field_validator(
        "stripe_api_key_file",
        "database_url_file",
        "stripe_webhook_secret_file",
        "console_token_file",
    )
    @classmethod
    def _readable_file(cls, path: Path | None) -> Path | None:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{path} is not a readable file")
        return path

    @model_validator(mode="after")
    def _secrets_from_files(self) -> "Settings":
        """`X_FILE` fills X when X itself is unset (Kubernetes and systemd credentials mount
        secrets as files: nothing in the environment, nothing in `ps`)."""
        if not self.database_url and self.database_url_file is not None:
            url = read_secret(self.database_url_file, "OUTBOX_DATABASE_URL_FILE")
            try:
                self.database_url = postgres_only(url)
            except ValueError as err:
                raise ValueError(f"OUTBOX_DATABASE_URL_FILE: {err}") from None
        if self.stripe_webhook_secret is None and self.stripe_webhook_secret_file is not None:
            self.stripe_webhook_secret = SecretStr(
                read_secret(self.stripe_webhook_secret_file, "STRIPE_WEBHOOK_SECRET_FILE")
            )
        if self.console_token is None and self.console_token_file is not None:
            self.console_token = SecretStr(
                read_secret(self.console_token_file, "OUTBOX_CONSOLE_TOKEN_FILE")
            )
        return self

    @model_validator(mode="after")
    def _strong_console_token(self) -> "Settings":
        """A console token is a password guarded only by the sign-in brake: refuse one that is
        guessable, and an empty one (which would otherwise mean "no sign-in at all")."""
        if self.console_token is not None:
            token = strip_newline(self.console_token.get_secret_value())
            problem = token_problem(token)
            if problem:
                raise ValueError(
                    f"OUTBOX_CONSOLE_TOKEN {problem}: use {CONSOLE_TOKEN_MIN} characters or more "
                    "(e.g. `openssl rand -hex 32`), or unset it"
                )
            self.console_token = SecretStr(token)
        return self

    @model_validator(mode="after")
    def _lease_outlives_call(self) -> "Settings":
        if self.lease_seconds < 2 * self.request_timeout:
            raise ValueError(
                "OUTBOX_LEASE_SECONDS must be at least twice OUTBOX_REQUEST_TIMEOUT: a lease "
                "that expires while its call is still running lets another relay send too"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_before_stale(self) -> "Settings":
        if self.relay_stale_after <= self.heartbeat_interval:
            raise ValueError(
                "OUTBOX_RELAY_STALE_AFTER must be longer than OUTBOX_HEARTBEAT_INTERVAL: a "
                "relay must heartbeat before the others count it out"
            )
        return self

    @field_validator("meter_keys")
    @classmethod
    def _meter_keys_parse(cls, text: str | None) -> str | None:
        parse_meter_keys(text)  # a clear ValueError naming the bad entry
        return text

    @model_validator(mode="after")
    def _actions_need_a_token(self) -> "Settings":
        if self.console_actions and self.console_token is None:
            raise ValueError(
                "OUTBOX_CONSOLE_ACTIONS needs OUTBOX_CONSOLE_TOKEN: console actions are only "
                "offered to a signed-in operator"
            )
        return self

    def api_key(self) -> str | None:
        """The Stripe secret key, from STRIPE_API_KEY or the file STRIPE_API_KEY_FILE names."""
        if self.stripe_api_key is not None:
            return self.stripe_api_key.get_secret_value().strip()
        if self.stripe_api_key_file is not None:
            try:
                return self.stripe_api_key_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as err:
                name = type(err).__name__
                raise ConfigError(
                    f"STRIPE_API_KEY_FILE: cannot read {self.stripe_api_key_file} ({name})"
                ) from None
        return None

    def egress_proxy(self) -> str | None:
        """OUTBOX_STRIPE_PROXY's value (None: not set, so HTTPS_PROXY applies)."""
        return self.stripe_proxy.get_secret_value() if self.stripe_proxy is not None else None

    def effective_concurrency(self, rate: float | None = None) -> int:
        """Configured, else enough calls in flight to keep `rate` (default: the whole limit)
        busy at 400 ms per call (Stripe answers in ~100-300 ms): 400 for a live key's
        1,000/s, 16 at the least. The relay passes its current share of the limit."""
        if self.concurrency is not None:
            return self.concurrency
        rate = self.effective_rate_limit() if rate is None else rate
        return max(16, min(10_000, round(rate * 0.4)))

    def effective_batch_size(self) -> int:
        """Rows per claim: configured, else 100 in v1 (one call each) and 1,000 in v2 stream
        (ten full calls: at 20,000 events/s, 20 claims/s instead of 200)."""
        if self.batch_size is not None:
            return self.batch_size
        return 100 if self.stripe_api_mode == "v1" else 1000

    def effective_rate_limit(self) -> float:
        """Configured limit, else Stripe's: 1,000/s for live keys, 25/s for test/sandbox keys."""
        if self.rate_limit is not None:
            return self.rate_limit
        key = self.api_key() or ""
        return 1000.0 if key.startswith(("sk_live_", "rk_live_")) else 25.0


def parse_meter_keys(text: str | None) -> dict[str, tuple[str, str]]:
    """OUTBOX_METER_KEYS: `event_name=customer_key:value_key`, several separated by `;`."""
    overrides: dict[str, tuple[str, str]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, keys = part.partition("=")
        customer, colon, value = keys.partition(":")
        name, customer, value = name.strip(), customer.strip(), value.strip()
        if not (sep and colon and name and customer and value) or customer == value:
            raise ValueError(
                f"{part.strip()!r} is not event_name=customer_key:value_key (two different keys)"
            )
        overrides[name] = (customer, value)
    return overrides


def env_name(field: str) -> str:
    """The environment variable that sets a field (what the operator has to fix)."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"OUTBOX_{field.upper()}"


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line: variable and reason, never the value it was given."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        # a field read by its alias (STRIPE_...) is named by it; "" is the whole model
        reason = item["msg"].removeprefix("Value error, ")
        if not field:  # a check across settings names its variables itself
            problems.append(reason)
            continue
        where = env_name(field) if field in Settings.model_fields else field
        problems.append(f"{where}: {reason}")
    return "invalid configuration: " + "; ".join(problems)


def load(**overrides: object) -> Settings:
    """The environment with the given values (CLI flags) on top; ConfigError on bad input."""
    # Flags of every type: pydantic validates and coerces each one against its field.
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None

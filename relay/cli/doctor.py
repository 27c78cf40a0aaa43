"""`outbox-relay doctor`: check a setup before going live (and in a deploy pipeline).

One line per check, each problem with its fix: the database (reachable, schema current and
closed to CREATE by other roles, its rules validated, the role's privileges for `run`), the
Stripe key (accepted,
live or test, restricted or not), the meters of every event name in unsent rows and in recent
history (per account), the webhook destination for the meter error events, and the clocks of
the relay, the database and Stripe.

Exit 0 when nothing would lose or mis-bill usage, 3 when something would (as `drift`), 1 when
it could not run (database unreachable). "Could not check" (a restricted key that may not read
meters or destinations) is a warning that leaves the exit code alone unless `--strict`. No
traceback and no secret is ever printed: errors are reduced to their class and Stripe's message.
"""

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import psycopg
import stripe

from relay.core.config import Settings, parse_meter_keys
from relay.core.errors import ConfigError
from relay.core.meters import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, MeterInfo
from relay.db import migrate
from relay.db import operations as ops
from relay.db.store import SyncStore
from relay.stripe.classify import error_message
from relay.stripe.egress import Egress, failure
from relay.stripe.meters import MeterReadError, fetch_meters
from relay.stripe.read_budget import ReadBudget, default_read_rate
from relay.stripe.sender import base_addresses

Level = Literal["ok", "warning", "problem", "unknown"]
ERROR_EVENTS = ("v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found")
# The rules on what the application writes (outbox_0030), by constraint name without the
# table's prefix: the ones `_check_rules_validated` may find NOT VALID.
CONTENT_RULES = (
    "customer_valid",
    "dimensions_valid",
    "event_name_valid",
    "identifier_valid",
    "metadata_valid",
    "stripe_account_valid",
    "trace_context_size",
    "value_valid",
)
# Privileges `run` needs (the tables it writes; reads of the others follow from SELECT).
NEEDED = (
    ("meter_event_outbox", "SELECT, UPDATE, DELETE"),
    ("meter_event_outbox_attempts", "INSERT"),
    ("meter_event_outbox_relays", "SELECT, INSERT, UPDATE, DELETE"),
    ("meter_event_outbox_meters", "SELECT, INSERT, UPDATE, DELETE"),
    ("meter_event_outbox_meter_reads", "INSERT, UPDATE"),
    ("meter_event_outbox_event_names", "INSERT, UPDATE"),
    ("meter_event_outbox_outage", "INSERT, UPDATE"),
)


@dataclass
class Check:
    area: str
    level: Level
    message: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    ran: bool = True  # False: the database could not be reached (exit 1)
    clock_margin: float = 60.0  # OUTBOX_CLOCK_MARGIN: the relay's, for the same judgement
    offsets: dict[str, float] = field(default_factory=dict)  # a clock minus this host's (s)

    def add(self, area: str, level: Level, message: str, fix: str = "") -> None:
        self.checks.append(Check(area, level, message, fix))

    def exit_code(self, strict: bool) -> int:
        if not self.ran:
            return 1
        bad: tuple[str, ...] = ("problem", "unknown") if strict else ("problem",)
        return 3 if any(c.level in bad for c in self.checks) else 0

    def as_dict(self, strict: bool) -> dict[str, Any]:
        return {
            "checks": [asdict(c) for c in self.checks],
            "problems": sum(c.level == "problem" for c in self.checks),
            "could_not_check": sum(c.level == "unknown" for c in self.checks),
            "warnings": sum(c.level == "warning" for c in self.checks),
            "exit_code": self.exit_code(strict),
        }


LABELS = {"ok": "ok", "warning": "warning", "problem": "PROBLEM", "unknown": "could not check"}


def render(report: Report) -> list[str]:
    lines = []
    for c in report.checks:
        fix = f" -> {c.fix}" if c.fix else ""
        lines.append(f"{LABELS[c.level]:<15} {c.area}: {c.message}{fix}")
    return lines


def run_doctor(settings: Settings, key: str | None) -> Report:
    report = Report(clock_margin=settings.clock_margin)
    names = check_database(report, settings.database_url)
    if not report.ran:
        return report
    asyncio.run(check_stripe(report, settings, key, names))
    return report


# --- the database ---------------------------------------------------------------------


def check_database(report: Report, database_url: str) -> list[tuple[str, str]]:
    """Reachable, schema current, privileges; returns the (account, event name)s in use."""
    try:
        conn = ops.connect(database_url)
    except Exception as err:
        report.ran = False
        report.add(
            "database",
            "problem",
            f"unreachable ({type(err).__name__})",
            "check OUTBOX_DATABASE_URL and that PostgreSQL accepts this role",
        )
        return []
    with conn:
        pooled = conn.prepare_threshold is None  # ops.connect found a pooler in between
        report.add(
            "database",
            "ok",
            "reachable through a pooler: the relay prepares no statement through it "
            "(OUTBOX_DATABASE_PREPARE=auto); in transaction pooling set OUTBOX_POLL_ONLY=true"
            if pooled
            else "reachable",
        )
        _check_schema(report, database_url)
        _check_privileges(report, conn)
        _check_schema_creators(report, conn)
        _check_rules_validated(report, conn)
        probe = conn.execute(
            "SELECT statement_timestamp(), current_setting('transaction_read_only'),"
            " current_setting('default_transaction_isolation'), quote_ident(current_user)"
        ).fetchone()
        if probe is not None:
            _clock(report, "database", probe[0])
            if probe[1] == "on":
                report.add(
                    "database",
                    "problem",
                    "read-only (a replica, or default_transaction_read_only=on): `run` will "
                    "not start",
                    "point OUTBOX_DATABASE_URL at the primary",
                )
            _check_isolation(report, probe[2], probe[3])
        try:
            return [(n.account, n.event_name) for n in SyncStore(conn).event_names_in_use()]
        except psycopg.Error:
            return []


def _check_isolation(report: Report, default: str, role: str) -> None:  # role: quoted
    """The relay's statements are written for READ COMMITTED: an update that meets a row
    changed since its snapshot re-reads it and goes on. Its claims begin READ COMMITTED
    themselves; its single statements (outcomes, a webhook's rejections) run in the session's
    default, where a race with an application's cancel fails to serialize and is retried."""
    if default == "read committed":
        return
    report.add(
        "database",
        "warning",
        f"default_transaction_isolation is {default}: the relay's outcomes and rejections "
        "fail to serialize when they race a cancel, and are retried",
        f"ALTER ROLE {role} SET default_transaction_isolation = 'read committed'",
    )


def _check_schema(report: Report, database_url: str) -> None:
    try:
        at, known = migrate.current(database_url), migrate.revisions()
    except Exception as err:
        report.add("schema", "problem", f"could not be read ({type(err).__name__})")
        return
    if at == known[0]:
        report.add("schema", "ok", f"current ({at})")
    elif at in known or at is None:
        report.add(
            "schema",
            "problem",
            f"at {at or 'nothing'}, this relay needs {known[0]}",
            "run `outbox-relay migrate`",
        )
    else:
        report.add("schema", "warning", f"at {at}, newer than this relay ({known[0]})")


def _check_privileges(report: Report, conn: psycopg.Connection) -> None:
    missing = []
    for table, privileges in NEEDED:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(%s, %s)",
            (table, table, privileges),
        ).fetchone()
        if not (row and row[0]):
            missing.append(f"{privileges} on {table}")
    if missing:
        report.add(
            "privileges",
            "problem",
            "the role lacks " + "; ".join(missing),
            "GRANT them to the relay's role (docs/meters.md, doctor)",
        )
    else:
        report.add("privileges", "ok", "the role can do everything `run` needs")


def _check_schema_creators(report: Report, conn: psycopg.Connection) -> None:
    """Who besides the schema's owner may create in the outbox's schema. A function or operator
    created there can be a closer match for a call in a query than the built-in one, and runs
    with the rights of whoever's query calls it. The outbox's own functions name the built-ins
    in pg_catalog (outbox_0027); the relay's and the applications' queries do not."""
    row = conn.execute(
        "SELECT n.nspname, has_schema_privilege('public', n.oid, 'CREATE'),"
        " array(SELECT DISTINCT pg_get_userbyid(a.grantee) FROM aclexplode(n.nspacl) a"
        "       WHERE a.privilege_type = 'CREATE' AND a.grantee NOT IN (0, n.nspowner)"
        "       ORDER BY 1)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass('meter_event_outbox')"
    ).fetchone()
    if row is None:
        return  # no schema yet: _check_schema says so
    schema, everyone, roles = row
    quoted = conn.execute("SELECT quote_ident(%s)", (schema,)).fetchone()
    name = quoted[0] if quoted else schema
    if everyone:
        report.add(
            "schema",
            "warning",
            f"every role may create in schema {schema} (the default before PostgreSQL 15): "
            "a function or operator one creates there can be run by other roles' queries "
            "with their rights",
            f"REVOKE CREATE ON SCHEMA {name} FROM PUBLIC",
        )
    elif roles:
        report.add(
            "schema",
            "warning",
            f"roles besides its owner may create in schema {schema}: {', '.join(roles)}",
            f"REVOKE CREATE ON SCHEMA {name} FROM <role>, unless the role is trusted as the "
            "owner is",
        )
    else:
        report.add("schema", "ok", f"only its owner may create in schema {schema}")


def _check_rules_validated(report: Report, conn: psycopg.Connection) -> None:
    """The table's rules that PostgreSQL has not checked against every row. outbox_0030 adds
    its rules NOT VALID on a table over 64 MB (a check of every row would hold inserts for the
    scan): they are enforced on every insert and update all the same, and the rows already
    there met the rules they replace, so this is a note, with the online way to complete it.
    Only those eight: a NOT VALID constraint of the application's own is its business (its old
    rows may break it on purpose). VALIDATE is the table owner's, and doctor usually runs as
    the relay's role: the note names the owner, and the table by its schema."""
    rows = conn.execute(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),"
        " pg_get_userbyid(c.relowner), quote_ident(k.conname)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_constraint k ON k.conrelid = c.oid"
        " WHERE c.oid = to_regclass('meter_event_outbox') AND k.contype = 'c'"
        " AND NOT k.convalidated AND k.conname = ANY(%s) ORDER BY k.conname",
        ([f"meter_event_outbox_{rule}" for rule in CONTENT_RULES],),
    ).fetchall()
    if rows:
        table, owner = rows[0][0], rows[0][1]
        report.add(
            "schema",
            "ok",
            f"{len(rows)} rules are enforced but not yet checked against the rows written "
            "before the last migration (those met the rules they replaced)",
            f"optional, online (inserts and the relay go on), as the table's owner {owner}: "
            + "; ".join(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}" for _, _, name in rows),
        )


# --- Stripe -----------------------------------------------------------------------------


async def check_stripe(
    report: Report, settings: Settings, key: str | None, names: list[tuple[str, str]]
) -> None:
    if not key:
        report.add("stripe key", "problem", "not set", "set STRIPE_API_KEY or STRIPE_API_KEY_FILE")
        return
    mode = "live" if key.startswith(("sk_live_", "rk_live_")) else "test"
    kind = "restricted" if key.startswith("rk_") else "secret"
    egress = _check_egress(report, settings)
    if egress is None:
        return
    connector = aiohttp.TCPConnector(ssl=egress.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        client = stripe.StripeClient(
            key,
            base_addresses=base_addresses(settings.stripe_api_base),
            max_network_retries=1,
            http_client=stripe.AIOHTTPClient(
                timeout=settings.request_timeout,
                session=http,
                proxy=egress.aiohttp_proxy(settings.stripe_api_base or stripe.DEFAULT_API_BASE),
            ),
        )
        if not await _check_key(report, client, mode, kind):
            return
        budget = ReadBudget(settings.read_rate_limit or default_read_rate(key))
        await _check_meters(report, client, budget, names, parse_meter_keys(settings.meter_keys))
        await _check_destinations(report, client, names, settings)


def _check_egress(report: Report, settings: Settings) -> Egress | None:
    """The way out to Stripe as `run` takes it: the proxy (never its credentials) and the CAs."""
    try:
        egress = Egress.from_settings(settings)
        egress.ssl_context()
    except ConfigError as err:
        report.add("stripe egress", "problem", str(err))
        return None
    proxy, trust = egress.describe()
    report.add("stripe egress", "ok", f"proxy: {proxy}; trusts: {trust}")
    return egress


async def _check_key(report: Report, client: stripe.StripeClient, mode: str, kind: str) -> bool:
    """One call that needs only the key; its Date header is Stripe's clock."""
    try:
        page = await client.v1.billing.meters.list_async({"limit": 1})
    except stripe.AuthenticationError as err:
        report.add(
            "stripe key",
            "problem",
            f"refused by Stripe (401): {error_message(err)}",
            "set a valid STRIPE_API_KEY",
        )
        return False
    except stripe.PermissionError:
        report.add("stripe key", "ok", f"accepted ({mode} mode, {kind} key)")
        return True
    except Exception as err:
        report.add("stripe key", "unknown", f"Stripe did not answer ({_why(err)})")
        return False
    report.add("stripe key", "ok", f"accepted ({mode} mode, {kind} key)")
    date = page.last_response.headers.get("Date") if page.last_response else None
    if date:
        _clock(report, "stripe", parsedate_to_datetime(date))
    return True


async def _check_meters(
    report: Report,
    client: stripe.StripeClient,
    budget: ReadBudget,
    names: list[tuple[str, str]],
    overrides: dict[str, tuple[str, str]],
) -> None:
    accounts = sorted({a for a, _ in names} | {""})
    for account in accounts:
        used = sorted(n for a, n in names if a == account)
        where = f"account {account}" if account else "platform account"
        try:
            meters = await fetch_meters(client, account, budget)
        except MeterReadError as err:
            level: Level = "unknown" if err.outcome in ("forbidden", "refused") else "problem"
            fix = (
                "give the key the billing meter read permission, or set OUTBOX_METER_KEYS"
                if err.outcome == "forbidden"
                else "try again; the relay keeps its last known meters meanwhile"
            )
            report.add("meters", level, f"{where}: meters not readable: {err.detail}", fix)
            continue
        if not used:
            report.add("meters", "ok", f"{where}: {len(meters)} meter(s), no event name in use")
        for name in used:
            _judge(report, where, name, [m for m in meters if m.event_name == name], overrides)


def _judge(
    report: Report,
    where: str,
    name: str,
    meters: list[MeterInfo],
    overrides: dict[str, tuple[str, str]],
) -> None:
    """One event name in use against its meters (the catalogue's rules, said for operators)."""
    subject = f"{where}, event name {name!r}"
    active = [m for m in meters if m.active]
    if not meters:
        report.add(
            "meters",
            "problem",
            f"{subject}: no meter; rows are held (meter_missing)",
            "create a meter with this event name in Stripe, or fix the event name",
        )
        return
    if not active:
        report.add(
            "meters",
            "problem",
            f"{subject}: meter {meters[0].meter_id} is inactive; rows are held (meter_inactive)",
            "reactivate the meter in Stripe",
        )
        return
    if len(active) > 1:
        report.add(
            "meters",
            "problem",
            f"{subject}: {len(active)} active meters; rows are held",
            "deactivate all but one",
        )
        return
    meter = active[0]
    if meter.event_time_window is not None:
        report.add(
            "meters",
            "problem",
            f"{subject}: meter {meter.meter_id} is pre-aggregated per {meter.event_time_window} "
            "(only the last event of a window counts); rows are held (meter_pre_aggregated)",
            "use a meter without event_time_window for per-fact usage",
        )
        return
    keys = (meter.customer_key, meter.value_key)
    override = overrides.get(name)
    if override is not None and override != keys:
        report.add(
            "meters",
            "problem",
            f"{subject}: OUTBOX_METER_KEYS says {override}, the meter says {keys}",
            "fix or remove the override",
        )
        return
    if meter.formula not in ("sum", "count"):
        report.add(
            "meters",
            "warning",
            f"{subject}: formula {meter.formula!r}: `drift` cannot compare it by sum",
        )
        return
    custom = (
        ""
        if keys == (DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY)
        else (f", custom keys {meter.customer_key}/{meter.value_key} (handled)")
    )
    report.add("meters", "ok", f"{subject}: meter {meter.meter_id} ({meter.formula}){custom}")


async def _check_destinations(
    report: Report, client: stripe.StripeClient, names: list[tuple[str, str]], settings: Settings
) -> None:
    secret = settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value():
        report.add(
            "webhooks",
            "problem",
            "STRIPE_WEBHOOK_SECRET is not set: Stripe's error "
            "reports cannot be verified, so rejections are never recorded",
            "set STRIPE_WEBHOOK_SECRET to the destination's signing secret",
        )
    try:
        listed = await client.v2.core.event_destinations.list_async()
    except stripe.PermissionError:
        report.add(
            "webhooks",
            "unknown",
            "the key may not read event destinations",
            "check in the Dashboard that a destination receives " + " and ".join(ERROR_EVENTS),
        )
        return
    except Exception as err:
        report.add("webhooks", "unknown", f"event destinations not read ({_why(err)})")
        return
    connected = any(a for a, _ in names)
    good = [d for d in listed.data if _receives_errors(d, connected)]
    if good:
        report.add("webhooks", "ok", f"destination {good[0].id} receives the meter error events")
        return
    where = " from connected accounts (events_from other_accounts)" if connected else ""
    report.add(
        "webhooks",
        "problem",
        f"no enabled destination receives {' and '.join(ERROR_EVENTS)}{where}: "
        "rejections would never reach the relay",
        "add an event destination (webhook endpoint to /webhooks/stripe) for both events",
    )


def _receives_errors(destination: Any, connected: bool) -> bool:
    events = set(getattr(destination, "enabled_events", None) or ())
    sources = set(getattr(destination, "events_from", None) or ("self",))
    return (
        getattr(destination, "status", None) == "enabled"
        and set(ERROR_EVENTS) <= events
        and (not connected or "other_accounts" in sources)
    )


# --- clocks and errors ------------------------------------------------------------------


def _clock(report: Report, whose: str, then: datetime) -> None:
    """One clock against this host's (the relay's skew log line and gauge judge the same way,
    relay/core/clock.py), and the database's against Stripe's once both are known: the
    database judges a timestamp at recording, Stripe on arrival."""
    margin = report.clock_margin
    skew = (then - datetime.now(UTC)).total_seconds()
    report.offsets[whose] = skew
    if abs(skew) <= margin:
        report.add("clocks", "ok", f"{whose} within {abs(skew):.0f} s of this host")
    else:
        report.add(
            "clocks",
            "problem",
            f"{whose} is {skew:+.0f} s off this host (margin OUTBOX_CLOCK_MARGIN={margin:.0f} s): "
            "the relay judges timestamps by the database's and Stripe's clocks, but webhook "
            "signatures and logs use this host's",
            "sync the clocks with NTP",
        )
    if {"database", "stripe"} <= report.offsets.keys():
        apart = report.offsets["database"] - report.offsets["stripe"]
        if abs(apart) > margin:
            report.add(
                "clocks",
                "problem",
                f"the database is {apart:+.0f} s off Stripe (margin {margin:.0f} s): usage the "
                "database accepts at the edges of Stripe's window would wait or fail",
                "sync the database server's clock with NTP",
            )


def _why(err: Exception) -> str:
    if isinstance(err, stripe.APIConnectionError):
        return failure(err)
    if isinstance(err, stripe.StripeError):
        return f"{type(err).__name__}: {error_message(err)}"
    return type(err).__name__

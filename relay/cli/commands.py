"""The `outbox-relay` command: one sub-command per operator task."""

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from outbox.dburl import has_password, redact
from relay.cli import show
from relay.cli.options import secrets_help, setting_options
from relay.core import config, errors
from relay.core.config import Settings
from relay.core.vocabulary import STATES

if TYPE_CHECKING:  # the database modules load only when a command needs them
    from relay.db.queries import RetryHow


def _settings(**overrides: object) -> Settings:
    """Environment settings with the non-empty CLI flags applied on top."""
    return config.load(**overrides)


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise errors.ConfigError("no database: set OUTBOX_DATABASE_URL or pass --database-url")
    return settings.database_url


def _failure(err: BaseException) -> tuple[str, int, bool]:
    """Any error that ends a command, as (one line, exit code, foreseen); see the exit codes in
    docs/configuration.md. An unforeseen error is a bug: `run` keeps its traceback, as a field
    of the line."""
    import psycopg
    import psycopg_pool
    import sqlalchemy.exc

    if isinstance(err, errors.ConfigError | errors.StartupError | errors.ServiceDied):
        return str(err), err.exit_code, True
    if isinstance(err, click.ClickException):
        return errors.one_line(err.format_message()), err.exit_code, True
    if isinstance(err, sqlalchemy.exc.DBAPIError) and err.orig is not None:
        err = err.orig
    if isinstance(err, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        return "the outbox schema is missing or old: run `outbox-relay migrate`", 2, True
    if isinstance(err, psycopg.errors.InsufficientPrivilege):
        return (
            f"{errors.one_line(str(err))}: run this command as a login of the role it needs "
            "(`outbox-relay roles`; docs/operations.md, Database roles)",
            2,
            True,
        )
    if isinstance(err, psycopg.OperationalError | psycopg_pool.PoolTimeout):
        failure = errors.database_error(err)
        return str(failure), failure.exit_code, True
    return f"unexpected {type(err).__name__}: {errors.one_line(str(err))}", 1, False


class _Main(click.Group):
    """Ends every command the same way: one line on stderr (a JSON log line once `run` has
    set up logging), no traceback, and exit code 2 (configuration) or 1 (runtime)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        from relay.core import logs

        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.exceptions.Abort:
            sys.exit(errors.RUNTIME_EXIT)
        except Exception as err:
            message, code, foreseen = _failure(err)
            if logs.is_json():
                logs.fatal(message, code, None if foreseen else err)
            else:
                show.echo(f"outbox-relay: error: {message}", err=True)
            sys.exit(code)
        if isinstance(result, int) and result:  # --help, --version: click's own exit code
            sys.exit(result)
        return result


def _warn_password_flag(ctx: click.Context, param: click.Parameter, url: str | None) -> str | None:
    """A password on the command line is visible to every user in `ps`: say so (the value
    itself is never printed)."""
    from click.core import ParameterSource

    source = ctx.get_parameter_source(param.name or "")
    if url and source is ParameterSource.COMMANDLINE and has_password(url):
        show.echo(
            "outbox-relay: warning: --database-url holds a password, which other users of this "
            "machine can read in `ps`: use OUTBOX_DATABASE_URL_FILE or a libpq passfile instead",
            err=True,
        )
    return url


database_option = click.option(
    "--database-url",
    envvar="OUTBOX_DATABASE_URL",
    help="PostgreSQL URL (env OUTBOX_DATABASE_URL; OUTBOX_DATABASE_URL_FILE keeps it out of ps)",
    callback=_warn_password_flag,
)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """Report usage recorded in a PostgreSQL outbox to Stripe meters, exactly once."""


@main.command()
@database_option
@click.option("--revision", default="head", show_default=True)
@click.option("--downgrade", "down", is_flag=True, help="Downgrade to --revision instead.")
@click.option("--sql", "offline", is_flag=True, help="Print the upgrade SQL; touch no database.")
@click.option("--yes", is_flag=True, help="Downgrade without asking (no terminal: required).")
def migrate(database_url: str | None, revision: str, down: bool, offline: bool, yes: bool) -> None:
    """Create or upgrade the outbox schema (idempotent).

    The version is kept in its own table, outbox_alembic_version, beside (never inside) the
    application's alembic_version; a database migrated by an older release is adopted."""
    from relay.db import migrate as migrations

    if offline:
        if down:
            raise click.UsageError("--sql prints upgrades only")
        migrations.upgrade_sql(sys.stdout, revision)
        return
    url = _database_url(_settings(database_url=database_url))
    if down:
        migrations.check_downgrade(url, revision)  # unsent rows: refused before any question
        _confirm(
            f"Downgrade the outbox schema on {redact(url)} to {revision}? What later revisions "
            "created is dropped, with its data.",
            yes,
        )
        migrations.downgrade(url, revision)
    else:
        migrations.upgrade(url, revision)
    click.echo(f"schema at {migrations.current(url) or 'base'} on {redact(url)}")


@main.command()
@click.option("--sql", "as_sql", is_flag=True, help="Print the DDL (no BEGIN/COMMIT).")
@click.option("--from", "start", help="Only what comes after this revision (an upgrade step).")
@click.option("--revision", default="head", show_default=True, help="Up to this revision.")
def schema(as_sql: bool, start: str | None, revision: str) -> None:
    """The outbox schema, for other migration tools (Flyway, Liquibase, sqitch, Rails...).

    The DDL includes outbox_alembic_version and its row, so `outbox-relay run` (which checks
    the schema's revision) works on a database migrated this way; run the output as one
    migration of your tool. Without --sql: the revisions this release ships."""
    from relay.db import migrate as migrations

    if as_sql:
        migrations.upgrade_sql(sys.stdout, revision, start=start, bare=True)
        return
    for rev in reversed(migrations.revisions()):
        click.echo(rev)


@main.command()
@database_option
@click.option("--sql", "as_sql", is_flag=True, help="Print the SQL; touch no database.")
def roles(database_url: str | None, as_sql: bool) -> None:
    """Create the roles outbox_writer, outbox_relay and outbox_reader and grant each what its
    job needs, on every outbox table (run as the owner after each migrate; idempotent).

    Give logins a role with `CREATE ROLE app LOGIN ... IN ROLE outbox_writer`. The migrations
    keep running as the owner; `run` as outbox_relay; status, list, inspect as outbox_reader."""
    from relay.db import roles as db_roles

    if as_sql:
        click.echo(db_roles.roles_sql(), nl=False)
        return
    url = _database_url(_settings(database_url=database_url))
    db_roles.apply(url)
    click.echo(f"roles {', '.join(db_roles.ROLES)} granted on {redact(url)}")


@main.command(epilog=secrets_help())
@database_option
@setting_options("database_url")
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    envvar="OUTBOX_LOG_LEVEL",
    show_default=True,
    help="(env OUTBOX_LOG_LEVEL)",
)
def run(log_format: str, log_level: str, **flags: object) -> None:
    """Run the relay daemon until SIGTERM/SIGINT."""
    from relay.core import logs

    logs.configure(level=log_level, json=log_format == "json")
    from relay.core.hardening import no_core_dumps

    no_core_dumps()  # before any secret is read
    settings = _settings(**flags)
    from relay import daemon  # after the settings: a bad value is refused without the wait

    daemon.run_loop(daemon.serve(settings))


def _json_value(value: object) -> object:
    """ISO-8601 for times, seconds for durations, exact numbers for numerics."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _emit(data: object, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=_json_value, indent=2))
    else:
        render()


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _confirm(question: str, yes: bool) -> None:
    """Ask before a destructive step; with no terminal (CI, cron) refuse unless --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Refusing without a terminal to ask: pass --yes")
    if not click.confirm(question, default=False):
        raise click.ClickException("cancelled; nothing changed")


@main.command()
@database_option
@json_option
@click.option(
    "--fail-if-lag",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Exit 4 when the oldest unsent fact was recorded more than SECONDS ago.",
)
@click.option(
    "--fail-if-failed",
    type=click.IntRange(min=1),
    metavar="N",
    help="Exit 5 when N or more rows are failed (waiting for an operator).",
)
def status(
    database_url: str | None, as_json: bool, fail_if_lag: float | None, fail_if_failed: int | None
) -> None:
    """Counts per state, true lag, what unsent rows wait for, failures by code.

    Lag is the age of the oldest unsent fact (pending or in flight, backing off included),
    from when it was recorded and from when it happened. Exit codes: 0 fine, 4 lag over
    --fail-if-lag, 5 failed rows at --fail-if-failed or more (4 wins when both hold),
    1 runtime error, 2 configuration.
    """
    from relay.db import operations as ops

    settings = _settings(database_url=database_url)
    with ops.connect(_database_url(settings)) as conn:
        data = ops.status(conn, stale_seconds=settings.relay_stale_after)
    _emit(data, as_json, lambda: _render_status(data))
    if ops.lag_exceeded(data, fail_if_lag):
        click.echo(f"lag {data['lag']['created_age_seconds']:.1f} s > {fail_if_lag:g} s", err=True)
        sys.exit(4)
    if ops.failed_exceeded(data, fail_if_failed):
        click.echo(f"{data['counts'].get('failed', 0)} failed row(s)", err=True)
        sys.exit(5)


def _render_outage(console: Any, data: dict[str, Any]) -> None:
    """One line first while the outage breaker is open (the same text as the console's)."""
    from relay.db import outage

    text = outage.line(data.get("outage"))
    if text:
        console.print(show.cell(text), style="bold red")


def _render_confirmation(console: Any, c: dict[str, Any]) -> None:
    """Accepted rows against Stripe's hourly totals, in one line (two with an oldest hour)."""
    console.print(
        f"accepted: {c['confirmed']} confirmed, {c['awaiting']} awaiting confirmation, "
        f"{c['drifting']} in {c['drifting_groups']} drifting group(s), "
        f"{c['not_confirmable']} not confirmable"
    )
    if c["oldest_unconfirmed_hour"] is not None:
        console.print(f"oldest unconfirmed hour: {c['oldest_unconfirmed_hour'].isoformat()}")


def _render_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    _render_outage(console, data)
    table = Table("state", "rows", title="meter_event_outbox")
    for state, n in data["counts"].items():
        table.add_row(show.cell(state), str(n))
    console.print(table)
    _render_confirmation(console, data["confirmation"])
    lag, unsent = data["lag"], data["unsent"]
    if lag["oldest_unsent_created_at"] is None:
        console.print("lag: nothing unsent")
    else:
        console.print(
            f"lag: oldest unsent fact recorded {lag['created_age_seconds']:.1f} s ago "
            f"({lag['oldest_unsent_created_at'].isoformat()}), happened "
            f"{lag['occurred_age_seconds']:.1f} s ago"
        )
    console.print(_unsent_table(unsent))
    if data.get("held_for_meter"):
        meters = Table(
            "event name",
            "stripe account",
            "reason",
            "rows",
            "what to do",
            title="held, not sent: Stripe would drop them",
        )
        for h in data["held_for_meter"]:
            meters.add_row(
                h["event_name"],
                h["stripe_account"] or "(platform)",
                h["code"],
                str(h["rows"]),
                h["what_to_do"],
            )
        console.print(meters)
    for r in data.get("meter_reads", []):
        console.print(
            f"meters of {r['stripe_account'] or 'the platform'} not read ({r['outcome']}): "
            f"{r['detail'] or ''}; the last known catalogue (or the default keys) is used"
        )
    relays = data["relays"]
    console.print(f"relays running: {'unknown' if relays is None else len(relays)}")
    if data["failures_by_code"]:
        failures = Table("state", "code", "rows", title="needs a decision")
        for f in data["failures_by_code"]:
            failures.add_row(show.cell(f["state"]), show.cell(f["code"]), str(f["count"]))
        console.print(failures)


def _unsent_table(unsent: dict[str, Any]) -> Any:
    """Every bucket with rows, its groups (code, account, next attempt) under it, and the total
    the buckets add up to."""
    from rich.table import Table

    table = Table("waiting for", "rows", "code", "account", "next attempt in", title="unsent")
    for bucket in unsent["buckets"].values():
        if not bucket["rows"]:
            continue
        table.add_row(show.cell(bucket["title"]), str(bucket["rows"]), "", "", "")
        for g in bucket["groups"]:
            wait = g["next_attempt_in_seconds"]
            table.add_row(
                "",
                str(g["rows"]),
                show.cell(g["code"]),
                show.cell(g["stripe_account"] or ""),
                "-" if wait is None else ("due now" if wait == 0 else f"{wait:.0f} s"),
            )
    table.add_row("unsent in all", str(unsent["total"]), "", "", "")
    return table


@main.command(name="list")
@database_option
@click.option(
    "--state",
    type=click.Choice(STATES),
)
@click.option("--code", help="Last error code.")
@click.option("--customer")
@click.option("--event-name")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    help="Recorded at or after (ISO-8601, UTC unless an offset is given).",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
def list_rows(database_url: str | None, as_json: bool, **filters: Any) -> None:
    """Rows matching every filter, newest first. Exits 3 when none matched."""
    from relay.db import operations as ops

    if filters["since"] is not None and filters["since"].tzinfo is None:
        filters["since"] = filters["since"].replace(tzinfo=UTC)
    with ops.connect(_database_url(_settings(database_url=database_url))) as conn:
        found = ops.list_rows(conn, **filters)

    def render() -> None:
        for r in found:
            code = f" {r['last_error_code']}" if r["last_error_code"] else ""
            show.echo(
                f"{r['identifier']}  {r['state']}{code}  {r['customer']}  {r['event_name']}  "
                f"value={r['value']}  attempts={r['attempts']}  "
                f"recorded={r['created_at'].isoformat()}"
            )

    _emit(found, as_json, render)
    if not found:
        click.echo("no row matched", err=True)
        sys.exit(3)


@main.command()
@database_option
@click.argument("identifier")
@json_option
def inspect(database_url: str | None, identifier: str, as_json: bool) -> None:
    """Everything recorded about one usage fact, and every Stripe call made for it."""
    from relay.db import operations as ops

    settings = _settings(database_url=database_url)
    with ops.connect(_database_url(settings)) as conn:
        data = ops.inspect(conn, identifier)
    if data is None:
        raise click.ClickException(
            f"no usage recorded with identifier {identifier!r}: never recorded, or pruned "
            f"(accepted/cancelled rows are kept {settings.retention_days:g} days)"
        )
    _emit(data, as_json, lambda: _render_row(data))


def _render_row(data: dict[str, Any]) -> None:
    show.echo(data["summary"])
    for key, value in data.items():
        if key not in ("summary", "history"):
            shown = value.isoformat() if isinstance(value, datetime) else value
            show.echo(f"{key:>26}: {'-' if shown is None else shown}")
    show.echo(f"attempts ({len(data['history'])}):")
    for a in data["history"]:
        show.echo(
            f"  {a['attempted_at'].isoformat()}  #{a['attempt']} key {a['key_generation']} "
            f"{a['action']} -> {a['state']} {a['http_status'] or '-'} {a['code'] or ''} "
            f"{a['stripe_request_id'] or ''} {a['latency_ms'] or 0:.0f} ms {a['relay_id'] or ''}"
        )


@main.command()
@database_option
@click.argument("identifier", required=False)
@click.option("--code", help="Retry every failed/rejected row with this error code.")
@click.option("--all", "all_failed", is_flag=True, help="Retry every failed row.")
@click.option(
    "--include-rejected", is_flag=True, help="With --all: also rows Stripe rejected (see below)."
)
@click.option("--force", is_flag=True, help="Also rows a resend could double-count.")
@click.option("--dry-run", is_flag=True, help="Show what would be requeued; change nothing.")
@json_option
def retry(
    database_url: str | None,
    identifier: str | None,
    code: str | None,
    all_failed: bool,
    include_rejected: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send failed or rejected rows again (fresh idempotency key, fresh attempt budget).

    `--all` leaves rejected rows out (one line says how many): Stripe rejected them after
    accepting them, a resend under the same identifier is not billed, and the fix is usually
    new usage under a new identifier. `--include-rejected` takes them in (still refused as
    unsafe unless --force).

    Exit codes: 0 requeued, 3 some rows refused as unsafe (see stderr), 1 nothing to retry
    (unknown identifier, a row that is not failed/rejected, no row with that code).
    """
    from relay.db import operations as ops

    if not (identifier or code or all_failed):
        raise click.UsageError("give an IDENTIFIER, --code CODE or --all")
    if identifier and (code or all_failed):
        raise click.UsageError("give an IDENTIFIER or --code/--all, not both")
    if include_rejected and not all_failed:
        raise click.UsageError("--include-rejected goes with --all")
    settings = _settings(database_url=database_url)
    window = settings.dedup_window_hours
    rejected = not all_failed or include_rejected
    with ops.connect(_database_url(settings)) as conn:
        why = identifier and ops.not_retryable(conn, identifier)
        if why:
            raise click.ClickException(why)
        how: RetryHow = {
            "identifier": identifier,
            "code": code,
            "force": force,
            "window_hours": window,
            "rejected": rejected,
        }
        if dry_run:
            preview = ops.retry_preview(conn, **how)
            requeued = [c.identifier for c in preview if not c.refused]
            refused = [c._asdict() for c in preview if c.refused]
        else:
            requeued, refused = ops.retry(conn, **how)
        skipped = 0 if rejected else ops.rejected_count(conn, code)
    data = {"dry_run": dry_run, "requeued": requeued, "refused": refused, "skipped": skipped}
    verb = "would requeue" if dry_run else "requeued"
    _emit(data, as_json, lambda: _render_retry(verb, requeued, refused, skipped))
    if refused:
        sys.exit(3)
    if not requeued:
        click.echo("no failed or rejected row matched", err=True)
        sys.exit(1)


def _render_retry(
    verb: str, requeued: list[str], refused: list[dict[str, Any]], skipped: int
) -> None:
    show.echo(f"{verb} {len(requeued)} row(s)")
    if skipped:
        show.echo(
            f"skipped {skipped} rejected row(s): Stripe will not bill a resend under the same "
            "identifier; record corrected usage under new identifiers, or add --include-rejected"
        )
    for identifier in requeued[:50]:
        show.echo(f"  {identifier}")
    for r in refused:
        if r["state"] == "rejected":
            why = (
                "Stripe rejected it and may answer a resend with 'duplicate identifier'; "
                "record the corrected usage under a new identifier (or --force)"
            )
        else:
            why = (
                f"first attempt {r['first_attempt_at']} is outside the safe dedup window; "
                "a resend could double-count. Check the meter's event summaries, then "
                "--force if it was not counted"
            )
        show.echo(f"refused {r['identifier']} ({r['code']}): {why}", err=True)


@main.command()
@database_option
@click.argument("identifier")
@json_option
def cancel(database_url: str | None, identifier: str, as_json: bool) -> None:
    """Cancel a usage fact (locally, or via a meter event adjustment if Stripe may have it)."""
    import outbox
    from relay.db import operations as ops

    with ops.connect(_database_url(_settings(database_url=database_url))) as conn:
        try:
            result = ops.cancel(conn, identifier)
        except outbox.UnknownIdentifier as err:
            raise click.ClickException(str(err)) from None
    data = {"identifier": identifier, "state": result.state, "action": result.action}
    _emit(
        data,
        as_json,
        lambda: show.echo(f"{identifier}: state={result.state} action={result.action}"),
    )


@main.command()
@database_option
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Retention, > 0 (default OUTBOX_RETENTION_DAYS)",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--force", is_flag=True, help="Prune inside Stripe's 24 h dedup/cancel windows.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
@json_option
def prune(
    database_url: str | None,
    older_than_days: float | None,
    batch_size: int,
    force: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete old accepted/cancelled rows (and their attempts) in bounded batches."""
    from relay.db import operations as ops

    settings = _settings(database_url=database_url)
    days = older_than_days if older_than_days is not None else settings.retention_days
    refusal = ops.prune_refusal(days, force)
    if refusal:
        raise click.UsageError(refusal)
    with ops.connect(_database_url(settings)) as conn:
        if dry_run:
            data = {
                "dry_run": True,
                "older_than_days": days,
                **ops.prune_preview(conn, older_than_days=days),
            }
            _emit(
                data,
                as_json,
                lambda: click.echo(f"would delete {data['n']} row(s) older than {days:g} days"),
            )
            return
        _confirm(f"Delete accepted/cancelled rows last changed over {days:g} days ago?", yes)
        deleted = ops.prune(conn, older_than_days=days, batch_size=batch_size)
    data = {"dry_run": False, "older_than_days": days, "deleted": deleted}
    _emit(data, as_json, lambda: click.echo(f"deleted {deleted} row(s) older than {days:g} days"))


@main.command()
@database_option
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
@json_option
def recover(database_url: str | None, yes: bool, as_json: bool) -> None:
    """After moving the database without its UNLOGGED tables (logical replication, a copy of
    the data only): treat every row recorded so far as possibly sent and recount the status
    tallies, as the first fold after a crash of PostgreSQL does."""
    from relay.db import operations as ops

    settings = _settings(database_url=database_url)
    with ops.connect(_database_url(settings)) as conn:
        _confirm(
            "Treat every row recorded so far as possibly sent and recount the tallies "
            "(a read of the whole outbox)?",
            yes,
        )
        try:
            data = ops.recover(conn)
        except ops.RecoverRefused as err:
            raise click.UsageError(str(err)) from None
    _emit(data, as_json, lambda: _render_recovered(data))
    if not data["finished"]:
        sys.exit(3)


def _render_recovered(data: dict[str, Any]) -> None:
    if data["possibly_sent_below"]:
        click.echo(f"rows up to id {data['possibly_sent_below']} may have been sent")
    else:
        click.echo("no rows recorded yet")
    if data["tallies_recounted"]:
        click.echo("tallies recounted from the outbox")
    else:
        click.echo(
            f"tallies: the recount waits for {data['prepared_transactions']} transaction(s) "
            "prepared for two-phase commit (pg_prepared_xacts): commit or roll them back; "
            "the next fold of a relay recounts"
        )
    for behind in data["sequences_behind"]:
        click.echo(
            f"sequence {behind['sequence']} is behind its table (logical replication does not "
            f"carry sequences): as the tables' owner, {behind['fix']}"
        )


@main.command()
@database_option
@click.option(
    "--stripe-api-base", envvar="OUTBOX_STRIPE_API_BASE", help="(env OUTBOX_STRIPE_API_BASE)"
)
@click.option("--hours", type=float, default=72, show_default=True, help="How far back to look.")
@json_option
def reconcile(
    database_url: str | None, stripe_api_base: str | None, hours: float, as_json: bool
) -> None:
    """Apply Stripe's meter error events of the last HOURS (for missed webhooks)."""
    import asyncio
    from datetime import timedelta

    from relay import daemon
    from relay.db.pool import make_pool
    from relay.db.store import Store
    from relay.stripe.egress import Egress
    from relay.stripe.reconcile import reconcile as run_reconcile
    from relay.stripe.sender import StripeSender

    settings = _settings(database_url=database_url, stripe_api_base=stripe_api_base)

    async def go() -> dict[str, object]:
        sender = StripeSender(
            daemon.check(settings), settings.stripe_api_base, egress=Egress.from_settings(settings)
        )
        pool = make_pool(settings.database_url, max_size=1, prepare=settings.database_prepare)
        await pool.open(wait=True)
        try:
            return await run_reconcile(sender.client, Store(pool), timedelta(hours=hours))
        finally:
            await sender.close()
            await pool.close()

    result = asyncio.run(go())
    _emit(
        result,
        as_json,
        lambda: click.echo(
            f"applied {result['events']} error event(s); {result['rejected']} row(s) rejected"
        ),
    )


@main.command()
@database_option
@click.option(
    "--stripe-api-base", envvar="OUTBOX_STRIPE_API_BASE", help="(env OUTBOX_STRIPE_API_BASE)"
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    help="Facts that happened at or after (UTC unless an offset is given; default 24 h ago).",
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    help="...and before (default now). Both are widened to whole hours.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1, max=100),
    default=5.0,
    show_default=True,
    help="Stripe calls per second for the comparison (the relay keeps the rest of the limit).",
)
@json_option
def drift(
    database_url: str | None,
    stripe_api_base: str | None,
    since: datetime | None,
    until: datetime | None,
    rate: float,
    as_json: bool,
) -> None:
    """Compare our accepted totals with Stripe's meter event summaries, per customer, meter
    and hour; store the report (the console shows the newest). Exit 3 on drift."""
    from relay import daemon
    from relay.db import operations as ops
    from relay.db.store import SyncStore
    from relay.stripe.drift import compare

    settings = _settings(database_url=database_url, stripe_api_base=stripe_api_base)
    now = datetime.now(UTC)
    until = _utc(until) or now
    since = _utc(since) or until - timedelta(hours=24)
    if since >= until:
        raise click.UsageError("--since must be before --until")
    totals = _stripe_totals(daemon.check(settings), settings.stripe_api_base, rate)
    with ops.connect(_database_url(settings)) as conn:
        report = compare(SyncStore(conn), totals, since, until).as_dict()
        report["id"], report["created_at"] = SyncStore(conn).save_drift_report(report)
    _emit(report, as_json, lambda: _render_drift(report))
    if report["differing"]:
        sys.exit(3)


@main.command()
@database_option
@click.option(
    "--stripe-api-base", envvar="OUTBOX_STRIPE_API_BASE", help="(env OUTBOX_STRIPE_API_BASE)"
)
@click.option("--strict", is_flag=True, help="Treat 'could not check' as a problem (exit 3).")
@json_option
def doctor(
    database_url: str | None, stripe_api_base: str | None, strict: bool, as_json: bool
) -> None:
    """Check the setup before going live: database, schema and privileges, the Stripe key,
    the meters of every event name in use, the webhook destination, the clocks. One line per
    check with its fix. Exit 0 fine, 3 a problem that would lose or mis-bill usage, 1 could
    not run (database unreachable)."""
    from relay.cli.doctor import render, run_doctor

    settings = _settings(database_url=database_url, stripe_api_base=stripe_api_base)
    _database_url(settings)  # a configuration error (exit 2), not a finding
    report = run_doctor(settings, settings.api_key())
    if as_json:
        click.echo(json.dumps(report.as_dict(strict), indent=2))
    else:
        for line in render(report):
            click.echo(line)
    sys.exit(report.exit_code(strict))


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _stripe_totals(key: str, api_base: str | None, rate: float) -> Any:
    import stripe

    from relay.stripe.drift import Pacer, StripeTotals
    from relay.stripe.sender import base_addresses

    client = stripe.StripeClient(
        key,
        base_addresses=base_addresses(api_base),
        max_network_retries=2,
    )
    return StripeTotals(client, Pacer(rate))


def _render_drift(report: dict[str, Any]) -> None:
    show.echo(
        f"drift report {report['id']}: {report['since'].isoformat()} .. "
        f"{report['until'].isoformat()}: {report['groups']} group(s) compared, "
        f"{report['differing']} differ, {report['unsettled']} unsettled (sends still open)"
    )
    for d in report["differences"]:
        show.echo(
            f"  {d['customer']} {d['event_name']} ({d['meter']}) {d['hour'].isoformat()}: "
            f"ours {d['ours']}, Stripe {d['stripe']} (difference {d['difference']}); "
            f"{d['events']} accepted fact(s): {', '.join(d['identifiers']) or '-'}"
        )
    if report["skipped_meters"]:
        show.echo(
            f"  not compared (no active sum/count meter): {', '.join(report['skipped_meters'])}"
        )


@main.command()
@click.option(
    "--database-url",
    help="Use this PostgreSQL instead of an embedded one.",
    callback=_warn_password_flag,
)
@click.option("--events", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(database_url: str | None, events: int, seed: int) -> None:
    """Run the whole job end to end on an embedded database and the Stripe emulator."""
    from relay.cli.demo import run_demo
    from relay.core import logs

    logs.configure(level="ERROR", json=False)  # injected faults are the point; not news
    if not run_demo(database_url, events, seed):
        sys.exit(1)


def _register_optional() -> None:
    """Commands living in their own modules register here, keeping this file an index."""
    from relay.emulator.command import emulator

    main.add_command(emulator)


try:
    _register_optional()
except ImportError as exc:  # pragma: no cover - only while a module is being written
    print(f"warning: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The `outbox-relay` command: one sub-command per operator task."""

import json
import sys
from collections.abc import Callable

import click

from outbox.dburl import redact
from relay.config import Settings


def _settings(**overrides: object) -> Settings:
    """Environment settings with the non-empty CLI flags applied on top."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise click.UsageError("no database: set OUTBOX_DATABASE_URL or pass --database-url")
    return settings.database_url


database_option = click.option(
    "--database-url", envvar="OUTBOX_DATABASE_URL", help="PostgreSQL URL (env OUTBOX_DATABASE_URL)"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """Report usage recorded in a PostgreSQL outbox to Stripe meters, exactly once."""


@main.command()
@database_option
@click.option("--revision", default="head", show_default=True)
@click.option("--downgrade", "down", is_flag=True, help="Downgrade to --revision instead.")
def migrate(database_url: str | None, revision: str, down: bool) -> None:
    """Create or upgrade the outbox schema (idempotent)."""
    from relay import migrate as migrations

    url = _database_url(_settings(database_url=database_url))
    if down:
        migrations.downgrade(url, revision)
    else:
        migrations.upgrade(url, revision)
    click.echo(f"schema at {migrations.current(url) or 'base'} on {redact(url)}")


@main.command()
@database_option
@click.option("--stripe-api-base", envvar="OUTBOX_STRIPE_API_BASE", help="e.g. the emulator URL")
@click.option(
    "--mode",
    "stripe_api_mode",
    type=click.Choice(["v1", "v2-stream"]),
    envvar="OUTBOX_STRIPE_API_MODE",
)
@click.option("--concurrency", type=int, help="Rows held at once (default: rate limit x 0.4 s)")
@click.option("--batch-size", type=int, help="Rows per claim (default 100)")
@click.option(
    "--rate-limit", type=float, help="Calls/s for the account (default 1000 live, 25 test keys)"
)
@click.option(
    "--rate-limit-scope",
    type=click.Choice(["account", "relay"]),
    help="account (default): shared by the relays on this database; relay: each its own",
)
@click.option("--poll-interval", type=float, help="Seconds between polls (default 1)")
@click.option("--poll-only", is_flag=True, default=None, help="No LISTEN (PgBouncer txn mode)")
@click.option("--http-host", help="Webhook/metrics bind address (default 127.0.0.1)")
@click.option("--http-port", type=int, help="Webhook/metrics port (default 8080)")
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    envvar="OUTBOX_LOG_LEVEL",
    show_default=True,
)
def run(log_format: str, log_level: str, **flags: object) -> None:
    """Run the relay daemon until SIGTERM/SIGINT."""
    from relay import logs, service

    logs.configure(level=log_level, json=log_format == "json")
    try:
        service.run_loop(service.serve(_settings(**flags)))
    except service.ConfigError as err:
        raise click.UsageError(str(err)) from None


def _emit(data: object, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        render()


@main.command()
@database_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(database_url: str | None, as_json: bool) -> None:
    """Counts per state, age of the oldest due row, failures by code."""
    from relay import ops

    settings = _settings(database_url=database_url)
    with ops.connect(_database_url(settings)) as conn:
        data = ops.status(conn, stale_seconds=settings.relay_stale_after)

    def render() -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table("state", "rows", title="meter_event_outbox")
        for state, n in data["counts"].items():
            table.add_row(state, str(n))
        console = Console()
        console.print(table)
        console.print(f"oldest due row: {data['oldest_due_age_seconds']:.1f} s old")
        relays = data["relays"]
        console.print(f"relays running: {'unknown' if relays is None else len(relays)}")
        if data["waiting"]:
            waiting = Table("code", "stripe account", "rows", title="pending, waiting because")
            for w in data["waiting"]:
                waiting.add_row(w["code"], w["stripe_account"] or "(platform)", str(w["count"]))
            console.print(waiting)
        if data["failures_by_code"]:
            failures = Table("state", "code", "rows", title="needs a decision")
            for f in data["failures_by_code"]:
                failures.add_row(f["state"], f["code"], str(f["count"]))
            console.print(failures)

    _emit(data, as_json, render)


@main.command()
@database_option
@click.argument("identifier")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(database_url: str | None, identifier: str, as_json: bool) -> None:
    """Everything recorded about one usage fact."""
    from relay import ops

    with ops.connect(_database_url(_settings(database_url=database_url))) as conn:
        data = ops.inspect(conn, identifier)
    if data is None:
        raise click.ClickException(f"no usage recorded with identifier {identifier!r}")

    def render() -> None:
        for key, value in data.items():
            click.echo(f"{key:>20}: {value}")

    _emit(data, as_json, render)


@main.command()
@database_option
@click.argument("identifier", required=False)
@click.option("--code", help="Retry every failed/rejected row with this error code.")
@click.option("--all", "all_failed", is_flag=True, help="Retry every failed/rejected row.")
@click.option("--force", is_flag=True, help="Also rows a resend could double-count.")
def retry(
    database_url: str | None,
    identifier: str | None,
    code: str | None,
    all_failed: bool,
    force: bool,
) -> None:
    """Send failed or rejected rows again (fresh idempotency key, fresh attempt budget)."""
    from relay import ops

    if not (identifier or code or all_failed):
        raise click.UsageError("give an IDENTIFIER, --code CODE or --all")
    settings = _settings(database_url=database_url)
    with ops.connect(_database_url(settings)) as conn:
        requeued, refused = ops.retry(
            conn,
            identifier=identifier,
            code=code,
            force=force,
            window_hours=settings.dedup_window_hours,
        )
    click.echo(f"requeued {len(requeued)} row(s)")
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
        click.echo(f"refused {r['identifier']} ({r['code']}): {why}", err=True)
    if refused:
        sys.exit(3)


@main.command()
@database_option
@click.argument("identifier")
def cancel(database_url: str | None, identifier: str) -> None:
    """Cancel a usage fact (locally, or via a meter event adjustment if Stripe may have it)."""
    import outbox
    from relay import ops

    with ops.connect(_database_url(_settings(database_url=database_url))) as conn:
        try:
            result = ops.cancel(conn, identifier)
        except outbox.UnknownIdentifier as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"{identifier}: state={result.state} action={result.action}")


@main.command()
@database_option
@click.option("--older-than-days", type=float, help="Retention (default OUTBOX_RETENTION_DAYS)")
@click.option("--batch-size", type=int, default=1000, show_default=True)
def prune(database_url: str | None, older_than_days: float | None, batch_size: int) -> None:
    """Delete old accepted/cancelled rows in bounded batches."""
    from relay import ops

    settings = _settings(database_url=database_url)
    days = older_than_days if older_than_days is not None else settings.retention_days
    with ops.connect(_database_url(settings)) as conn:
        deleted = ops.prune(conn, older_than_days=days, batch_size=batch_size)
    click.echo(f"deleted {deleted} row(s) older than {days:g} days")


@main.command()
@database_option
@click.option("--stripe-api-base", envvar="OUTBOX_STRIPE_API_BASE")
@click.option("--hours", type=float, default=72, show_default=True, help="How far back to look.")
def reconcile(database_url: str | None, stripe_api_base: str | None, hours: float) -> None:
    """Apply Stripe's meter error events of the last HOURS (for missed webhooks)."""
    import asyncio
    from datetime import timedelta

    from relay import service
    from relay.db import make_pool
    from relay.reconcile import reconcile as run_reconcile
    from relay.sender import StripeSender
    from relay.store import Store

    settings = _settings(database_url=database_url, stripe_api_base=stripe_api_base)

    async def go() -> dict[str, object]:
        sender = StripeSender(service.check(settings), settings.stripe_api_base)
        pool = make_pool(settings.database_url, max_size=1)
        await pool.open(wait=True)
        try:
            return await run_reconcile(sender.client, Store(pool), timedelta(hours=hours))
        finally:
            await sender.close()
            await pool.close()

    try:
        result = asyncio.run(go())
    except service.ConfigError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"applied {result['events']} error event(s); {result['rejected']} row(s) rejected")


@main.command()
@click.option("--database-url", help="Use this PostgreSQL instead of an embedded one.")
@click.option("--events", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(database_url: str | None, events: int, seed: int) -> None:
    """Run the whole job end to end on an embedded database and the Stripe emulator."""
    from relay import logs
    from relay.demo import run_demo

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

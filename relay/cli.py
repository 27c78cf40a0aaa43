"""The `outbox-relay` command: one sub-command per operator task."""

import sys

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

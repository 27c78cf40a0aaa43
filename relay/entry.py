"""The `outbox-relay` console script: the daemon's dependencies are the `relay` extra, so a
library-only install says what to install instead of printing an ImportError traceback."""

import sys

# Top-level modules of the `relay` extra (pyproject.toml), as imported.
RELAY_EXTRA = {
    "aiohttp",
    "alembic",
    "click",
    "httptools",
    "orjson",
    "prometheus_client",
    "psycopg_pool",
    "pydantic",
    "pydantic_settings",
    "rich",
    "sqlalchemy",
    "stripe",
    "structlog",
}


def main() -> None:
    try:
        from relay.cli.commands import main as cli
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in RELAY_EXTRA:
            raise
        print(
            f"outbox-relay: the relay needs its extra (missing {err.name}): "
            "pip install 'outbox-relay[relay]'",
            file=sys.stderr,
        )
        sys.exit(2)
    cli()

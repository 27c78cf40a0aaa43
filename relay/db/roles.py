"""`outbox-relay roles`: the three database roles (writer, relay, reader) and their grants.

The SQL is one idempotent script (roles.sql beside this file) that walks the catalogue, so
running it again after a migration covers the tables that migration added.
"""

from importlib import resources

import psycopg

from outbox.dburl import psycopg_url

ROLES = ("outbox_writer", "outbox_relay", "outbox_reader")


def roles_sql() -> str:
    return resources.files("relay.db").joinpath("roles.sql").read_text()


def apply(database_url: str) -> None:
    """Create the roles (if missing) and grant them their rights, as the connecting owner."""
    with psycopg.connect(psycopg_url(database_url), autocommit=True) as conn:
        conn.execute(roles_sql().encode())

"""Database URL handling shared by the library, the migrations and the relay.

Users may give `postgresql://`, `postgres://` or `postgresql+psycopg://`; SQLAlchemy needs the
driver spelled out and psycopg needs it absent.
"""

import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

ENV_VAR = "OUTBOX_DATABASE_URL"


class MissingDatabaseURL(RuntimeError):
    """No database was configured."""


def database_url_from_env() -> str:
    """The configured database URL, or a clear error naming the variable to set."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        raise MissingDatabaseURL(f"set {ENV_VAR} (e.g. postgresql://user@host:5432/db)")
    return url


def _split_scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("database URL must look like postgresql://user@host/db")
    base = scheme.split("+", 1)[0]
    if base not in ("postgresql", "postgres"):
        raise ValueError(f"unsupported database URL scheme {scheme!r}: PostgreSQL only")
    return scheme, rest


def sqlalchemy_url(url: str) -> str:
    """The URL with the psycopg 3 driver, for SQLAlchemy."""
    _, rest = _split_scheme(url)
    return f"postgresql+psycopg://{rest}"


def psycopg_url(url: str) -> str:
    """The URL without a driver suffix, for psycopg.connect()."""
    _, rest = _split_scheme(url)
    return f"postgresql://{rest}"


def with_database(url: str, name: str) -> str:
    """The same server (user, password, host, parameters) with database `name`: tests and
    benchmarks make scratch databases next to the one they were given."""
    parts = urlsplit(psycopg_url(url))
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def has_password(url: str) -> bool:
    """Whether the URL carries a non-empty password (userinfo or `password=` parameter). An
    empty one (`user:@host`, as embedded servers print it) is no secret."""
    rest = url.partition("://")[2]
    creds, at, _ = rest.rpartition("@")
    if at and creds.partition(":")[2]:
        return True
    return re.search(r"(?i)password=[^&]", rest) is not None


def redact(url: str) -> str:
    """The URL with any password (userinfo or `password=` parameter) masked, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    rest = re.sub(r"(?i)(password=)[^&]*", r"\1***", rest)
    return f"{scheme}{sep}{rest}"

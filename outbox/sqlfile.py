"""Named SQL queries kept in `.sql` files, loaded once (in the style of procrastinate).

A file holds blocks introduced by `-- name: some_query`. Queries use `:name` parameters, which
SQLAlchemy's text() understands; `for_psycopg` rewrites them to psycopg's `%(name)s`.
"""

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def load(package: str, filename: str) -> dict[str, str]:
    """All named queries of one .sql file of a package."""
    text = files(package).joinpath(filename).read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def for_psycopg(sql: str) -> str:
    """`:name` parameters as psycopg `%(name)s` placeholders, literal `%` escaped."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))

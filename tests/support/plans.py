"""The plan a prepared statement of the relay runs, as the tests look at it: the named query
PREPAREd by hand (its `:name` parameters as $1..$n, in order of appearance) and EXPLAINed with
its arguments written as literals (EXECUTE takes no bind parameters). The caller opens the
transaction and sets what the relay's would (`plan_cache_mode`, the claim's `claim_plan`)."""

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg.sql import Literal

from outbox.sqlfile import for_psycopg
from relay.db.pool import QUERIES

# The claim's parameters that are not text, as the relay's prepared claim declares them.
CLAIM_TYPES = {
    "fill": "int8",
    "one_walk": "bool",
    "exclusive": "bool",
    "after_at": "timestamptz",
    "after_id": "int8",
    "behind": "interval",
}


def explain(rows: list[tuple[Any, ...]]) -> str:
    """An EXPLAIN's rows as one text."""
    return "\n".join(r[0] for r in rows)


@contextlib.contextmanager
def prepared(
    db: psycopg.Connection[Any], query: str, types: Mapping[str, str] | None = None
) -> Iterator[Callable[[Mapping[str, Any], str], list[tuple[Any, ...]]]]:
    """The named `query` PREPAREd (each parameter declared as `types` says, text otherwise: LIMIT
    needs a number); yields `run(params, command)`, which runs `command` (EXECUTE, or EXPLAIN
    ... EXECUTE) of it with `params`. The plan a generic plan_cache_mode makes at the first run
    is the one later runs get, as for the relay's prepared statements."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", placeholder, for_psycopg(QUERIES[query]))
    declared = ", ".join((types or {}).get(n, "text") for n in names)
    db.execute(f"PREPARE by_hand {f'({declared})' if names else ''} AS {sql}")

    def run(params: Mapping[str, Any], command: str = "EXECUTE") -> list[tuple[Any, ...]]:
        arguments = ", ".join(Literal(params[n]).as_string(db) for n in names)
        return db.execute(f"{command} by_hand{f'({arguments})' if names else ''}").fetchall()

    yield run
    db.execute("DEALLOCATE by_hand")  # not after an error: the transaction is aborted then


def run_prepared(
    db: psycopg.Connection[Any],
    query: str,
    params: Mapping[str, Any],
    types: Mapping[str, str] | None = None,
    command: str = "EXECUTE",
) -> list[tuple[Any, ...]]:
    """`command` (EXECUTE, or EXPLAIN ... EXECUTE) of the prepared `query` with `params`."""
    with prepared(db, query, types) as run:
        return run(params, command)

"""The relay's shared words, spelled once: row states, row actions, and the codes that several
floors read.

States and actions are `Literal` types, not enums: the values are the strings the table's CHECK
constraints hold and psycopg returns, so a row read from the database is already typed, and the
hot path compares plain strings. mypy checks every spelling against these lists.
"""

from typing import Final, Literal, get_args

State = Literal["pending", "in_flight", "accepted", "failed", "rejected", "cancelled"]
STATES: Final[tuple[State, ...]] = get_args(State)
UNSENT_STATES: Final[frozenset[State]] = frozenset({"pending", "in_flight"})

Action = Literal["report", "cancel"]  # a row reports a fact, or cancels one reported earlier

KEY_REFUSED: Final = "api_key_refused"  # 401: the API key itself is refused, every account waits
ACCOUNT_REFUSED: Final = "account_access_refused"  # 403: the key may not act for this account
AUTH_WAIT_CODES: Final = frozenset({KEY_REFUSED, ACCOUNT_REFUSED})

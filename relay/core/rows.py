"""The relay's view of a claimed row and of the outcome it writes back."""

from collections.abc import Iterable
from datetime import datetime
from operator import itemgetter
from typing import NamedTuple, Self
from uuid import UUID

import orjson

from relay.core.vocabulary import Action, OutcomeKind, RelayCode, State


class Claimed(NamedTuple):
    """A row leased to this relay (columns of the `claim` query's RETURNING).

    Named tuples, not dataclasses: one is built per row on the hot path, and a tuple is
    several times cheaper to build than a frozen dataclass, and as immutable.
    """

    id: int
    lease_token: UUID
    identifier: str
    event_name: str
    customer: str
    payload_json: str  # the jsonb payload as PostgreSQL prints it (see `payload`)
    occurred_at: datetime
    stripe_account: str | None
    action: Action
    attempts: int
    key_generation: int
    previous_first_attempt_at: datetime | None
    first_attempt_at: datetime
    accepted_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> "Claimed":
        return cls._make(row)

    @property
    def payload(self) -> dict[str, str]:
        """The payload (flat, string values: the table's CHECK). Claimed as text: psycopg's
        jsonb loader is a per-row cost on the hot path, and the v2 stream body splices the text
        as is (relay/stripe/calls.py), so it is parsed only where a dict is needed."""
        payload: dict[str, str] = orjson.loads(self.payload_json)
        return payload

    @property
    def idempotency_key(self) -> str:
        """Deterministic: the identifier itself on generation 0, then a generation suffix.

        The same key is reused after an unknown outcome; the generation moves on only after a
        definitive (cached) failure, when the identifier still prevents a double count.
        """
        base = self.identifier if self.action == "report" else f"cancel:{self.identifier}"
        return base if self.key_generation == 0 else f"{base}#g{self.key_generation}"


class Outcome(NamedTuple):
    """What to write back for one claimed row (one element of `record_outcomes`).

    Built with the named constructors (`answered`, `refused`, `unsent`, `released`), which
    say how the outcome was decided (`kind`) and fill in the fields that follow from it. The
    outcome carries every decision the SQL needs, so the statement never matches on our
    error codes:
    - `may_have_counted`: a failed report whose event Stripe may still have counted (the
      outcome of its last call is unknown). A cancel requested meanwhile must then be sent;
      after a definitive refusal nothing was counted and the row is simply cancelled.
    - `called`: the outcome comes from a call to Stripe (or a send that crashed midway), so it
      is one entry of the row's attempt history; local refusals and shutdown releases are not.
    - `counted`: the attempt uses up one of the row's attempts (Stripe answered definitively).
    - `reached`: the call may have counted the event at Stripe (see relay.stripe.classify);
      None means "as `counted`". Only such calls start the dedup clock (`first_attempt_at`),
      so a row no call of which can have counted is cancelled locally.
    """

    row: Claimed
    state: State
    delay: float = 0.0
    counted: int = 1
    new_key: int = 0
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    latency_ms: float | None = None
    http_status: int | None = None
    may_have_counted: bool = False
    called: bool = False
    reached: bool | None = None
    kind: OutcomeKind = "answered"

    @classmethod
    def answered(
        cls,
        row: Claimed,
        state: State,
        *,
        delay: float = 0.0,
        counted: int = 1,
        new_key: int = 0,
        code: str | None = None,
        message: str | None = None,
        request_id: str | None = None,
        latency_ms: float | None = None,
        http_status: int | None = None,
        may_have_counted: bool = False,
        reached: bool | None = None,
    ) -> Self:
        """Stripe answered the row's call: one entry of its attempt history."""
        return cls(
            row,
            state,
            delay,
            counted,
            new_key,
            code,
            message,
            request_id,
            latency_ms,
            http_status,
            may_have_counted,
            True,
            reached,
            "answered",
        )

    @classmethod
    def refused(
        cls, row: Claimed, code: RelayCode, message: str, *, may_have_counted: bool = False
    ) -> Self:
        """Failed without a call: Stripe would refuse the row (invariants 5 and 6)."""
        return cls(
            row,
            "failed",
            counted=0,
            code=code,
            message=message,
            may_have_counted=may_have_counted,
            kind="refused",
        )

    @classmethod
    def unsent(cls, row: Claimed, code: RelayCode, message: str, delay: float = 0.0) -> Self:
        """Back to pending without a call: no attempt counted, same identifier, due again
        after `delay` seconds."""
        return cls(row, "pending", delay, counted=0, code=code, message=message, kind="unsent")

    @classmethod
    def released(
        cls,
        row: Claimed,
        code: RelayCode,
        message: str,
        delay: float,
        *,
        called: bool,
        counted: int,
    ) -> Self:
        """Back to pending with the same key after a call that gave no answer: it may have
        reached Stripe, so the retry replays whatever Stripe did. `called`: the send had
        started (it crashed midway), so the attempt is part of the row's history."""
        return cls(
            row,
            "pending",
            delay,
            counted,
            code=code,
            message=message[:500],
            called=called,
            reached=True,
            kind="released",
        )

    def for_rows(self, rows: Iterable[Claimed]) -> list["Outcome"]:
        """The same decision for other rows (the rows of one answered stream call): the
        decision is taken apart once, each copy costs one tuple."""
        decision = self.decision()
        make = Outcome._make
        return [make((row, *decision)) for row in rows]

    def decision(self) -> tuple[object, ...]:
        """Everything but the row (the fields after `row`, in declaration order): outcomes
        with equal decisions (and equal row actions) are written as one decision by
        `record_outcomes`."""
        return self[1:]

    def shared(self) -> tuple[object, ...]:
        """The decision without what differs per call (request id, latency): outcomes with
        equal shared parts (and equal row actions) are one decision of `record_outcomes`,
        which takes the request id and latency per row."""
        return _SHARED(self)  # type: ignore[no-any-return]

    @property
    def reached_stripe(self) -> bool:
        """Whether the call may have counted the event (`reached`, by default `counted`).
        Only such calls start the dedup clock: `record_outcomes` keeps the claim's
        first_attempt_at for them and restores the pre-claim value for the others."""
        return self.counted > 0 if self.reached is None else self.reached


# The fields of Outcome a batch's rows can share, by name (never by position).
_SHARED = itemgetter(
    *(i for i, f in enumerate(Outcome._fields) if f not in ("row", "request_id", "latency_ms"))
)

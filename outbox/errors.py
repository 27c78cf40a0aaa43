"""Exceptions raised by the outbox library: one base class so callers can catch them all."""

from dataclasses import dataclass


class OutboxError(Exception):
    """Base class of everything `outbox` raises on purpose."""


class InvalidUsage(OutboxError, ValueError):
    """A usage fact Stripe would refuse; raised before anything is written.

    `field` names the offending argument and `code` is stable for programs to match on.
    """

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.code = code


class IdentifierConflict(OutboxError):
    """The identifier is already recorded with different content; nothing was written.

    Replaying the same fact is harmless and returns the existing row; reusing an identifier for
    a different fact is a bug in the caller (Stripe would silently drop the second fact).
    """

    def __init__(self, identifier: str, differences: list[str]) -> None:
        super().__init__(
            f"identifier {identifier!r} is already recorded with different {', '.join(differences)}"
        )
        self.identifier = identifier
        self.differences = differences


class UnknownIdentifier(OutboxError, LookupError):
    """No usage fact with this identifier exists in the outbox."""

    def __init__(self, identifier: str) -> None:
        super().__init__(f"no usage recorded with identifier {identifier!r}")
        self.identifier = identifier


class UnsupportedConnection(OutboxError, TypeError):
    """`conn` is not a SQLAlchemy session/connection or a psycopg 3 connection/cursor."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one fact of a batch was refused: its position in the batch, the offending field and
    the same stable code InvalidUsage carries (or `identifier_conflict`)."""

    index: int
    field: str
    code: str
    message: str


class BatchRefused(OutboxError, ValueError):
    """record_usage_many wrote nothing: `refusals` lists every refused fact of the batch.

    A batch is all or nothing; the caller's transaction stays usable, so it may fix the facts
    and call again, or record the good ones alone.
    """

    def __init__(self, refusals: list[Refusal]) -> None:
        shown = "; ".join(f"#{r.index} {r.field}: {r.code}" for r in refusals[:10])
        more = f"; and {len(refusals) - 10} more" if len(refusals) > 10 else ""
        super().__init__(f"{len(refusals)} fact(s) refused, nothing written: {shown}{more}")
        self.refusals = refusals

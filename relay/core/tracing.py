"""Where the pipeline reports its work to tracing, and nothing more.

`active` stays None unless the daemon started OpenTelemetry (`OUTBOX_OTEL`, relay/pipeline/
telemetry.py): the pipeline then pays one module-attribute read and a branch per batch, never
per row, and nothing of OpenTelemetry is imported. Times are `time.time_ns()` taken around
the work, so spans are written after it without wrapping the hot path in context managers.
"""

from collections.abc import Sequence
from typing import Protocol

from relay.core.rows import Claimed, Outcome


class Tracer(Protocol):
    async def claimed(self, rows: Sequence[Claimed], start_ns: int) -> None:
        """One claim batch ended: its span; also learns the rows' recorded trace contexts."""

    def called(self, outcomes: Sequence[Outcome], start_ns: int) -> None:
        """One Stripe call ended with these outcomes (one per row sent)."""

    def written(self, outcomes: Sequence[Outcome], start_ns: int) -> None:
        """One outcome batch was written."""


active: Tracer | None = None

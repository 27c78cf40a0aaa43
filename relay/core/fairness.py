"""Whether a v2 claim walks the lanes first, or takes the oldest due rows alone.

Fairness (docs/design.md, invariant 7) is what the walk buys: it takes each lane's head round
robin, so one customer's backlog cannot make another customer's fresh usage wait behind all of
it. In v2 the claim then tops the batch up with the oldest due rows (relay.core.top_up). Per
row it takes, the walk costs about twice what the top-up does (a loose index scan step and a
lease probe per lane, against one step of an ordered scan): in a v2 stream at 0 ms Stripe
latency it was 15% of PostgreSQL's statement time (`bench.statement_share`).

It is only worth that where oldest first would be unfair, and the top-up's own rows show where:
a backlog that one or a few lanes hold fills the oldest rows with those lanes. So a v2 relay
walks while the rows its last top-up took were concentrated (more than CONCENTRATION rows per
lane on average), and otherwise takes the oldest due rows alone. Those are then many lanes'
rows, so a fresh row waits behind what many customers sent before it, oldest first, and not
behind one customer's backlog. A claim whose batch the walk filled took no top-up rows and
says nothing about the oldest rows: the next claim takes them alone and decides again. A
backlog that arrives while the walk is off fills the next top-up, which turns the walk back on
for the claim after it.

v1 always walks: one call in flight per lane, and no top-up.
"""

from collections.abc import Sequence

# Rows per lane, on average over the rows a top-up took, above which the next claim walks.
CONCENTRATION = 2


def walk_next(lanes: Sequence[tuple[str, str]]) -> bool:
    """Whether the next v2 claim walks, from the lanes of the rows the last top-up took (in
    any order; none: the batch came from the walk alone, or nothing was due)."""
    return len(lanes) > CONCENTRATION * len(set(lanes))

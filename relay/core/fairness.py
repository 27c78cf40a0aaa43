"""Whether a v2 claim walks the lanes first, or takes the due rows alone.

Fairness (docs/design.md, invariant 7) is what the walk buys: it takes each lane's head round
robin, so one customer's backlog cannot make another customer's fresh usage wait behind it. In
v2 the claim then tops the batch up with the oldest due rows (relay.core.top_up). The walk is a
statement and a round trip of its own before every claim, and per row it takes it costs about
twice what the top-up does (a loose index scan step and a lease probe per lane, against one step
of an ordered scan).

Round robin and oldest first only differ when there is a backlog: more rows due than one claim
takes. A top-up that came back short took every due row it could lock (there was nothing more
after it), so no row was waiting behind another: the next claim takes the due rows alone, and
a fresh row is taken by the claim after its commit whatever its lane. A top-up that came back
full, or a walk that filled the batch by itself, may have left rows behind: the next claim
walks, as every v2 claim did before. So a backlog is always walked from the second claim after
it builds up (the first, oldest first, is one batch), however its rows are spread over lanes,
customers or meters; only a relay that keeps up skips the walk, which is where the walk's
statement costs the most per row (claims of a few rows each).

A short top-up turns the walk off only when no other claim of the relay was running: the other
claim's locked rows may be why it came back short. A claim that failed decides nothing.
v1 always walks: one call in flight per lane, and no top-up.
"""


def walk_next(full: bool, other_claims: bool) -> bool:
    """Whether the next v2 claim walks: its top-up came back `full` (or the walk filled the
    batch alone), or `other_claims` of the relay were running beside it."""
    return full or other_claims

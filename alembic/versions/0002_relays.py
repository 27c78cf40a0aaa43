"""Live relays, so replicas share Stripe's per-account rate limit.

Revision ID: outbox_0002
Revises: outbox_0001
"""

from alembic import op

revision = "outbox_0002"
down_revision = "outbox_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per running relay, refreshed every second by its heartbeat; a relay that stops
    # deletes its row, one that dies simply stops refreshing it.
    op.execute(
        """
        CREATE TABLE meter_event_outbox_relays (
            relay_id text PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT now(),
            seen_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE meter_event_outbox_relays")

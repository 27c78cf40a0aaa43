"""Attempt history: one row per Stripe call made for an outbox row (operators' audit trail).

Revision ID: outbox_0003
Revises: outbox_0002
"""

from alembic import op

revision = "outbox_0003"
down_revision = "outbox_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Append-only; written by the relay in the same statement as the outcome it records, and
    # deleted by `prune` in the same statement as its outbox row. No foreign key: its check
    # (a locking probe of the outbox row per inserted attempt) cost 2.5 times the insert itself,
    # on the relay's hottest statement; the relay only ever inserts attempts of rows it holds.
    op.execute(
        """
        CREATE TABLE meter_event_outbox_attempts (
            id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            outbox_id         bigint NOT NULL,
            attempted_at      timestamptz NOT NULL DEFAULT now(),
            attempt           integer NOT NULL,
            key_generation    integer NOT NULL,
            action            text NOT NULL,
            state             text NOT NULL,
            http_status       integer,
            code              text,
            message           text,
            stripe_request_id text,
            latency_ms        real,
            relay_id          text
        )
        """
    )
    op.execute(
        "CREATE INDEX meter_event_outbox_attempts_row "
        "ON meter_event_outbox_attempts (outbox_id, id)"
    )
    op.execute(
        "COMMENT ON TABLE meter_event_outbox_attempts IS "
        "'Every Stripe call made for a meter_event_outbox row: outcome, HTTP status, code, "
        "request id, latency. Append-only; pruned with its row.'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE meter_event_outbox_attempts")

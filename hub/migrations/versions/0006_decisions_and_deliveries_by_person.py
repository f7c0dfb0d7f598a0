"""decisions and deliveries found by person, not by event: their event_id indexes
go (store.of_events finds an event's rows through its person). Each cost every
event a page written at a random place in it; together a third of the pages a
batch of fit notes wrote (`python -m bench.pages`, README Performance)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_decisions_event_id", table_name="decisions")
    op.drop_index("ix_deliveries_event_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"])
    op.create_index("ix_decisions_event_id", "decisions", ["event_id"])

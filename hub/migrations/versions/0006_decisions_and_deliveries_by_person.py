"""decisions and deliveries found by person, not by event: their event_id indexes
go (store.of_events finds an event's rows through its person). Each cost every
event a page written at a random place in it; together a third of the pages a
batch of fit notes wrote (`python -m bench.pages`, README Performance).

From this release the code also stores each event's bundle deflated
(`tables.Deflated`), reading either form. Older code reads only plain JSON, so
the downgrade inflates the bundles this release wrote.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""
import zlib

import sqlalchemy as sa
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
    events = sa.table("events", sa.column("event_id", sa.String), sa.column("bundle", sa.LargeBinary))
    bind, after = op.get_bind(), ""
    while True:  # in pages of 500, by event id
        page = bind.execute(sa.select(events.c.event_id, events.c.bundle).where(events.c.event_id > after)
                            .order_by(events.c.event_id).limit(500)).all()
        if not page:
            return
        for event_id, bundle in page:
            if bytes(bundle[:1]) == b"\x78":  # deflated (JSON starts with "{")
                bind.execute(events.update().where(events.c.event_id == event_id)
                             .values(bundle=zlib.decompress(bytes(bundle))))
        after = page[-1][0]

"""audit rows without prev_hash: it is the hash of the row before, so the chain
already holds it (each hash covers the previous one); 33 bytes less per row

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+, PostgreSQL) rewrites no row through
    # the append-only triggers, which stay in place.
    op.execute("ALTER TABLE audit DROP COLUMN prev_hash")


def downgrade() -> None:
    op.execute("ALTER TABLE audit ADD COLUMN prev_hash BLOB" if op.get_bind().dialect.name == "sqlite"
               else "ALTER TABLE audit ADD COLUMN prev_hash BYTEA")

"""per-person sequence numbers on events and deliveries; leases for work that
one worker at a time may do (serving a webhook recipient in order)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('person_seq',
    sa.Column('nhs_number', sa.String(length=10), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('nhs_number', name=op.f('pk_person_seq'))
    )
    op.create_table('leases',
    sa.Column('name', sa.String(length=140), nullable=False),
    sa.Column('holder', sa.String(length=100), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('person_seq', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('deliveries') as batch:
        batch.add_column(sa.Column('person_seq', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries') as batch:
        batch.drop_column('person_seq')
    with op.batch_alter_table('events') as batch:
        batch.drop_column('person_seq')
    op.drop_table('leases')
    op.drop_table('person_seq')

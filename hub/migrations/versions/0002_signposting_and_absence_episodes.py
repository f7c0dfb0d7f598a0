"""signposting and absence episodes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('absence_episodes',
    sa.Column('episode_id', sa.String(length=64), nullable=False),
    sa.Column('nhs_number', sa.String(length=10), nullable=False),
    sa.Column('start_on', sa.Date(), nullable=False),
    sa.Column('end_on', sa.Date(), nullable=False),
    sa.Column('milestone_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('milestone_event_id', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('episode_id', name=op.f('pk_absence_episodes'))
    )
    with op.batch_alter_table('absence_episodes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_absence_episodes_milestone_due_at'), ['milestone_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_absence_episodes_nhs_number'), ['nhs_number'], unique=False)

    op.create_table('absence_notes',
    sa.Column('note_key', sa.String(length=300), nullable=False),
    sa.Column('nhs_number', sa.String(length=10), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('start_on', sa.Date(), nullable=False),
    sa.Column('end_on', sa.Date(), nullable=False),
    sa.Column('not_fit', sa.Boolean(), nullable=False),
    sa.Column('superseded', sa.Boolean(), nullable=False),
    sa.Column('episode_id', sa.String(length=64), nullable=True),
    sa.Column('arrived_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('note_key', name=op.f('pk_absence_notes'))
    )
    with op.batch_alter_table('absence_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_absence_notes_episode_id'), ['episode_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_absence_notes_nhs_number'), ['nhs_number'], unique=False)

    op.create_table('signposting',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('nhs_number', sa.String(length=10), nullable=False),
    sa.Column('referrer_org_id', sa.String(length=64), nullable=True),
    sa.Column('referrer_type', sa.String(length=32), nullable=True),
    sa.Column('postcode_area', sa.String(length=4), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('notice_delivery_id', sa.String(length=140), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['events.event_id'], name=op.f('fk_signposting_event_id_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signposting')),
    sa.UniqueConstraint('event_id', name=op.f('uq_signposting_event_id'))
    )
    with op.batch_alter_table('signposting', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signposting_nhs_number'), ['nhs_number'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('signposting', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signposting_nhs_number'))

    op.drop_table('signposting')
    with op.batch_alter_table('absence_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_absence_notes_nhs_number'))
        batch_op.drop_index(batch_op.f('ix_absence_notes_episode_id'))

    op.drop_table('absence_notes')
    with op.batch_alter_table('absence_episodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_absence_episodes_nhs_number'))
        batch_op.drop_index(batch_op.f('ix_absence_episodes_milestone_due_at'))

    op.drop_table('absence_episodes')


"""hash-chained, append-only audit; break-glass

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
import hashlib

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

GENESIS = hashlib.sha256(b"health-work-hub audit genesis").digest()  # = hub.audit_chain.GENESIS


def upgrade() -> None:
    # The audit table is rebuilt: its rows gain a hash chain, and seq is assigned
    # by the hub (from audit_head) so it is part of what each hash covers.
    op.drop_table('audit')
    op.create_table('audit',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('ref', sa.String(length=140), nullable=True),
    sa.Column('event_id', sa.String(length=64), nullable=True),
    sa.Column('person', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.Column('prev_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit'))
    )
    op.create_index(op.f('ix_audit_person'), 'audit', ['person'], unique=False)
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head'))
    )
    op.bulk_insert(sa.table('audit_head', sa.column('id', sa.Integer), sa.column('seq', sa.BigInteger),
                            sa.column('hash', sa.LargeBinary)), [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table('break_glass',
    sa.Column('break_glass_id', sa.String(length=64), nullable=False),
    sa.Column('nhs_number', sa.String(length=10), nullable=False),
    sa.Column('recipient_id', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=40), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('reviewed_by', sa.String(length=100), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('review_note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('break_glass_id', name=op.f('pk_break_glass'))
    )
    op.create_index(op.f('ix_break_glass_nhs_number'), 'break_glass', ['nhs_number'], unique=False)
    # Append-only: the database itself refuses to change or remove an audit row.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END")
        op.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END")
    else:
        op.execute("CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")


def downgrade() -> None:
    op.drop_index(op.f('ix_break_glass_nhs_number'), table_name='break_glass')
    op.drop_table('break_glass')
    op.drop_table('audit_head')

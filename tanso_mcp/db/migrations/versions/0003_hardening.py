"""hardening: the outbox (plugin work handed over at shutdown, retried by the next process)

Revision ID: 0003_hardening
Revises: 0003_analytics
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa
import tanso_mcp.db.types


revision = '0003_hardening'
down_revision = '0003_analytics'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('plugin', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('payload', tanso_mcp.db.types.JSONDoc(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('due_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('plugin', 'key', name=op.f('uq_outbox_plugin_key'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_plugin_due_at', ['plugin', 'due_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_plugin_due_at')
    op.drop_table('outbox')

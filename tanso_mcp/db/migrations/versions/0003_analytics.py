"""analytics: hourly/daily/monthly rollup of events, its watermark, margin alerts; on
PostgreSQL each event records its writing transaction (tx_seq) so the rollup can take
events in commit-safe order

Revision ID: 0003_analytics
Revises: 0003_clock_protocol
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

import tanso_mcp.db.types


revision = '0003_analytics'
down_revision = '0003_clock_protocol'
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tx_seq', sa.BigInteger(), nullable=True))
    if bind.dialect.name == 'postgresql':
        # events written before this migration are older than every running transaction
        op.execute("UPDATE events SET tx_seq = 0 WHERE tx_seq IS NULL")
        op.execute(
            "ALTER TABLE events ALTER COLUMN tx_seq SET DEFAULT "
            "(pg_current_xact_id()::text::bigint)"
        )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_tx_seq', ['tx_seq'], unique=False, sqlite_where=sa.text('tx_seq IS NOT NULL'), postgresql_where=sa.text('tx_seq IS NOT NULL'))

    op.create_table(
        'analytics_rollup',
        sa.Column('environment_id', sa.String(length=36), nullable=False),
        sa.Column('grain', sa.String(length=2), nullable=False),
        sa.Column('bucket', sa.BigInteger(), nullable=False),
        sa.Column('customer_id', sa.String(length=36), nullable=False),
        sa.Column('feature_id', sa.String(length=36), nullable=False),
        sa.Column('model', sa.String(length=128), nullable=False),
        sa.Column('subscription_id', sa.String(length=36), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.Column('usage_q', sa.BigInteger(), nullable=False),
        sa.Column('revenue_micros', sa.BigInteger(), nullable=False),
        sa.Column('cost_micros', sa.BigInteger(), nullable=False),
        sa.Column('costed_events', sa.BigInteger(), nullable=False),
        sa.Column('unknown_model_events', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('environment_id', 'grain', 'bucket', 'customer_id', 'feature_id', 'model', 'subscription_id', name=op.f('pk_analytics_rollup')),
    )
    with op.batch_alter_table('analytics_rollup', schema=None) as batch_op:
        batch_op.create_index('ix_analytics_rollup_customer', ['environment_id', 'customer_id', 'grain', 'bucket'], unique=False)

    op.create_table(
        'analytics_state',
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_analytics_state')),
    )

    op.create_table(
        'margin_alerts',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('environment_id', sa.String(length=36), nullable=False),
        sa.Column('customer_id', sa.String(length=36), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=24), nullable=False),
        sa.Column('threshold', sa.String(length=32), nullable=False),
        sa.Column('gross_margin', sa.String(length=32), nullable=True),
        sa.Column('revenue_micros', sa.BigInteger(), nullable=False),
        sa.Column('cost_micros', sa.BigInteger(), nullable=False),
        sa.Column('window_start', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('window_end', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_margin_alerts_customer_id_customers'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_margin_alerts_environment_id_environments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_margin_alerts')),
        sa.UniqueConstraint('environment_id', 'customer_id', 'seq', name=op.f('uq_margin_alerts_environment_id_customer_id_seq')),
    )
    with op.batch_alter_table('margin_alerts', schema=None) as batch_op:
        batch_op.create_index('ix_margin_alerts_env_created', ['environment_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('margin_alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_margin_alerts_env_created')
    op.drop_table('margin_alerts')
    op.drop_table('analytics_state')
    with op.batch_alter_table('analytics_rollup', schema=None) as batch_op:
        batch_op.drop_index('ix_analytics_rollup_customer')
    op.drop_table('analytics_rollup')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_tx_seq', sqlite_where=sa.text('tx_seq IS NOT NULL'), postgresql_where=sa.text('tx_seq IS NOT NULL'))
        batch_op.drop_column('tx_seq')

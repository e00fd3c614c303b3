"""stripe core: encrypted environment secrets, webhook inbox, pending provider
subscriptions, provider ids of meters and metered prices, unique provider mirrors

Revision ID: 0003_stripe_core
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

import tanso_mcp.db.types


revision = '0003_stripe_core'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'environment_secrets',
        sa.Column('environment_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('ciphertext', sa.Text(), nullable=False),
        sa.Column('masked', sa.String(length=64), nullable=False),
        sa.Column('external_id', sa.String(length=100), nullable=True),
        sa.Column('created_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('modified_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_environment_secrets_environment_id_environments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('environment_id', 'name', name=op.f('pk_environment_secrets')),
    )
    op.create_table(
        'webhook_inbox',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('environment_id', sa.String(length=36), nullable=False),
        sa.Column('provider', sa.String(length=40), nullable=False),
        sa.Column('event_id', sa.String(length=255), nullable=False),
        sa.Column('event_type', sa.String(length=100), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('received_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('processed_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_webhook_inbox_environment_id_environments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_inbox')),
        sa.UniqueConstraint('environment_id', 'provider', 'event_id', name=op.f('uq_webhook_inbox_environment_id_provider_event_id')),
    )
    with op.batch_alter_table('webhook_inbox', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_inbox_pending', ['processed_at', 'next_attempt_at'], unique=False)
    op.create_table(
        'pending_subscriptions',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('environment_id', sa.String(length=36), nullable=False),
        sa.Column('customer_id', sa.String(length=36), nullable=False),
        sa.Column('plan_id', sa.String(length=36), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('external_id', sa.String(length=255), nullable=True),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('subscription_id', sa.String(length=36), nullable=True),
        sa.Column('grace_period_days', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('modified_at', tanso_mcp.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_pending_subscriptions_customer_id_customers'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_pending_subscriptions_environment_id_environments'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['plan_id'], ['plans.id'], name=op.f('fk_pending_subscriptions_plan_id_plans')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_subscriptions')),
        sa.UniqueConstraint('environment_id', 'external_id', name=op.f('uq_pending_subscriptions_environment_id_external_id')),
    )
    with op.batch_alter_table('pending_subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_pending_subscriptions_customer', ['customer_id', 'status'], unique=False)
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_meter_id', sa.String(length=100), nullable=True))
    with op.batch_alter_table('plan_features', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_price_id', sa.String(length=100), nullable=True))
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_ops', sa.Integer(), server_default=sa.text('0'), nullable=False))
        batch_op.create_index('uq_subscriptions_provider', ['environment_id', 'provider_subscription_id'], unique=True)
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index('uq_invoices_provider', ['environment_id', 'provider_invoice_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index('uq_invoices_provider')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('uq_subscriptions_provider')
        batch_op.drop_column('provider_ops')
    with op.batch_alter_table('plan_features', schema=None) as batch_op:
        batch_op.drop_column('provider_price_id')
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.drop_column('provider_meter_id')
    with op.batch_alter_table('pending_subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_pending_subscriptions_customer')
    op.drop_table('pending_subscriptions')
    with op.batch_alter_table('webhook_inbox', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_inbox_pending')
    op.drop_table('webhook_inbox')
    op.drop_table('environment_secrets')

"""stripe usage: meter reports (exactly-once overage forwarding), import jobs, one
record per Stripe customer / product / meter

Revision ID: 0003_stripe_usage
Revises: 0003_stripe_core
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

from tanso_mcp.db.types import JSONDoc, UTCDateTime

ID = lambda: sa.String(length=36)  # noqa: E731


revision = '0003_stripe_usage'
# joins the two branches that start at 0002 (test clocks + analytics, Stripe core) into one head
down_revision = '0003_stripe_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'meter_reports',
        sa.Column('id', ID(), nullable=False),
        sa.Column('environment_id', ID(), nullable=False),
        sa.Column('subscription_id', ID(), nullable=False),
        sa.Column('customer_id', ID(), nullable=False),
        sa.Column('feature_id', ID(), nullable=False),
        sa.Column('period_start', UTCDateTime(timezone=True), nullable=False),
        sa.Column('from_q', sa.BigInteger(), nullable=False),
        sa.Column('to_q', sa.BigInteger(), nullable=False),
        sa.Column('identifier', sa.String(length=100), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('event_timestamp', UTCDateTime(timezone=True), nullable=False),
        sa.Column('external_id', sa.String(length=200), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('sent_at', UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_meter_reports_environment_id_environments'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], name=op.f('fk_meter_reports_subscription_id_subscriptions'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_meter_reports')),
        sa.UniqueConstraint('environment_id', 'identifier', name=op.f('uq_meter_reports_environment_id_identifier')),
        sa.UniqueConstraint('subscription_id', 'feature_id', 'period_start', 'from_q', name=op.f('uq_meter_reports_subscription_id_feature_id_period_start_from_q')),
    )
    with op.batch_alter_table('meter_reports', schema=None) as batch_op:
        batch_op.create_index('ix_meter_reports_env_status_next', ['environment_id', 'status', 'next_attempt_at'], unique=False)

    op.create_table(
        'stripe_import_jobs',
        sa.Column('id', ID(), nullable=False),
        sa.Column('environment_id', ID(), nullable=False),
        sa.Column('status', sa.String(length=24), nullable=False),
        sa.Column('total_items', sa.Integer(), nullable=False),
        sa.Column('processed_items', sa.Integer(), nullable=False),
        sa.Column('failed_items', sa.Integer(), nullable=False),
        sa.Column('error_details', JSONDoc(), nullable=False),
        sa.Column('warnings', JSONDoc(), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('started_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('finished_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('modified_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['environment_id'], ['environments.id'], name=op.f('fk_stripe_import_jobs_environment_id_environments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_import_jobs')),
    )
    with op.batch_alter_table('stripe_import_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_stripe_import_jobs_env_status', ['environment_id', 'status'], unique=False)


    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('uq_customers_provider', ['environment_id', 'provider_customer_id'], unique=True)
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.create_index('uq_plans_provider_product', ['environment_id', 'provider_product_id'], unique=True)
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.create_index('uq_features_provider_meter', ['environment_id', 'provider_meter_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.drop_index('uq_features_provider_meter')
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.drop_index('uq_plans_provider_product')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('uq_customers_provider')
    with op.batch_alter_table('stripe_import_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_stripe_import_jobs_env_status')
    op.drop_table('stripe_import_jobs')
    with op.batch_alter_table('meter_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_meter_reports_env_status_next')
    op.drop_table('meter_reports')

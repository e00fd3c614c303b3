"""billing: exactly-once indexes for pending plan changes and CREDIT invoices, job indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_changes', schema=None) as batch_op:
        batch_op.create_index('uq_scheduled_changes_pending', ['subscription_id'], unique=True, sqlite_where=sa.text("status = 'PENDING'"), postgresql_where=sa.text("status = 'PENDING'"))
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index('uq_invoices_credit', ['subscription_id'], unique=True, sqlite_where=sa.text("type = 'CREDIT'"), postgresql_where=sa.text("type = 'CREDIT'"))
        batch_op.create_index('ix_invoices_subscription_status', ['subscription_id', 'status'], unique=False)
    with op.batch_alter_table('credit_grants', schema=None) as batch_op:
        batch_op.create_index('ix_credit_grants_env_expires', ['environment_id', 'expires_at'], unique=False)
        batch_op.create_index('ix_credit_grants_subscription', ['subscription_id'], unique=False)
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_env_cancel_at', ['environment_id', 'cancel_effective_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_env_cancel_at')
    with op.batch_alter_table('credit_grants', schema=None) as batch_op:
        batch_op.drop_index('ix_credit_grants_subscription')
        batch_op.drop_index('ix_credit_grants_env_expires')
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index('ix_invoices_subscription_status')
        batch_op.drop_index('uq_invoices_credit', sqlite_where=sa.text("type = 'CREDIT'"), postgresql_where=sa.text("type = 'CREDIT'"))
    with op.batch_alter_table('scheduled_changes', schema=None) as batch_op:
        batch_op.drop_index('uq_scheduled_changes_pending', sqlite_where=sa.text("status = 'PENDING'"), postgresql_where=sa.text("status = 'PENDING'"))

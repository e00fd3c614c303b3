"""stripe price versions: the pricing each cached provider price was created for, and
the provider prices a subscription's items carry

Revision ID: 0004_stripefix
Revises: 0003_stripe_usage
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

from tanso_mcp.db.types import JSONDoc


revision = '0004_stripefix'
down_revision = '0003_stripe_usage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_price_version', sa.String(length=64), nullable=True))
    with op.batch_alter_table('plan_features', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_price_version', sa.String(length=64), nullable=True))
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_items', JSONDoc(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_column('provider_items')
    with op.batch_alter_table('plan_features', schema=None) as batch_op:
        batch_op.drop_column('provider_price_version')
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.drop_column('provider_price_version')

"""events: no foreign key to environments (a per-row check on PostgreSQL that guards
nothing: environments and events are never deleted, the writer stores the authenticated
environment); on PostgreSQL the id and idempotency key compare bytewise (COLLATE "C")

Revision ID: 0005_pgbatch
Revises: 0004_stripefix
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa


revision = '0005_pgbatch'
down_revision = '0004_stripefix'
branch_labels = None
depends_on = None

FK = 'fk_events_environment_id_environments'


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.drop_constraint(FK, 'events', type_='foreignkey')
        # same type, other collation: no table rewrite, the two indexes are rebuilt
        op.execute(
            'ALTER TABLE events ALTER COLUMN id TYPE varchar(36) COLLATE "C", '
            'ALTER COLUMN idempotency_key TYPE varchar(128) COLLATE "C"'
        )
        return
    # SQLite drops a constraint by copying the table. The analytics rollup orders events
    # by rowid; the copy numbers rows 1..N in rowid order, which keeps every rowid when
    # they already are 1..N (events are never deleted). Otherwise the rollup, derived
    # data, is rebuilt from the events by its job.
    count, top = bind.execute(sa.text('SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM events')).one()
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_='foreignkey')
    if count != top:
        op.execute('DELETE FROM analytics_rollup')
        op.execute("DELETE FROM analytics_state WHERE name = 'events'")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute(
            'ALTER TABLE events ALTER COLUMN id TYPE varchar(36) COLLATE "default", '
            'ALTER COLUMN idempotency_key TYPE varchar(128) COLLATE "default"'
        )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_foreign_key(FK, 'environments', ['environment_id'], ['id'], ondelete='CASCADE')

"""test clocks run with real time: offset from real time and a frozen flag

A test environment's clock used to stand still between advances. From here on it reads
real time + clock_offset_us, or clock_now while clock_frozen. Existing test environments
start running: a clock that was ahead of real time keeps its lead; one that was behind
(frozen at its creation) catches up with real time, and the job runner then runs what
became due in between.

Revision ID: 0003_clock_protocol
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from tanso_mcp.clock import utcnow
from tanso_mcp.db.types import UTCDateTime

revision = "0003_clock_protocol"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("clock_offset_us", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("clock_frozen", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # the wall clock is read here on purpose: this is the moment the clocks start running
    now = utcnow()
    env = sa.table(
        "environments",
        sa.column("id", sa.String),
        sa.column("mode", sa.String),
        sa.column("clock_now", UTCDateTime()),
        sa.column("clock_offset_us", sa.BigInteger),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(env.c.id, env.c.clock_now).where(env.c.mode == "test")).all()
    for env_id, clock_now in rows:
        if clock_now is None:
            continue
        lead = clock_now - now
        if lead.total_seconds() > 0:
            offset = (lead.days * 86_400 + lead.seconds) * 1_000_000 + lead.microseconds
            bind.execute(sa.update(env).where(env.c.id == env_id).values(clock_offset_us=offset))


def downgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("clock_frozen")
        batch_op.drop_column("clock_offset_us")

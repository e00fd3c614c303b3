"""The Alembic migrations and the models describe the same schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tanso_mcp.db.models import Base

pytestmark = pytest.mark.anyio


async def test_models_match_migrations(ctx):
    def diff(conn):
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(mc, Base.metadata)

    async with ctx.db.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"models and migrations disagree: {changes}"


async def test_migrating_twice_is_a_no_op(ctx):
    from tanso_mcp.db.migrate import current_revision, upgrade

    await upgrade(ctx.db.engine)
    await upgrade(ctx.db.engine)
    assert await current_revision(ctx.db.engine) is not None


async def test_unique_regular_invoice_per_period(ctx, tenant):
    """A sample of the exactly-once constraints, checked against the real database."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    from tanso_mcp.db.models import Customer, Invoice, Plan, Subscription

    t = datetime(2026, 1, 1, tzinfo=UTC)
    env = tenant.env_ids["test"]
    async with ctx.db.unit_of_work() as s:
        c = Customer(environment_id=env, reference_id="c1", created_at=t, modified_at=t)
        p = Plan(
            environment_id=env, key="p", name="P", price_minor=100, created_at=t, modified_at=t
        )
        s.add_all([c, p])
        await s.flush()
        sub = Subscription(
            environment_id=env,
            customer_id=c.id,
            plan_id=p.id,
            interval_months=1,
            billing_anchor_day=1,
            started_at=t,
            current_period_start=t,
            current_period_end=t,
            created_at=t,
            modified_at=t,
        )
        s.add(sub)
        await s.flush()
        sub_id, cust_id = sub.id, c.id

    def inv(kind):
        return Invoice(
            environment_id=env,
            customer_id=cust_id,
            subscription_id=sub_id,
            type=kind,
            status="PENDING",
            currency="USD",
            period_start=t,
            created_at=t,
            modified_at=t,
        )

    async with ctx.db.unit_of_work() as s:
        s.add_all([inv("REGULAR"), inv("ADJUSTMENT"), inv("ADJUSTMENT")])
    with pytest.raises(IntegrityError):
        async with ctx.db.unit_of_work() as s:
            s.add(inv("REGULAR"))

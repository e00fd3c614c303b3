"""Factories for the metering tests: subscriptions, entitlements and credit pools written
with the ORM models directly (the billing services own those lifecycles; these helpers
only set up the rows a metering scenario needs), plus the credit ledger invariant."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from tanso_mcp.bootstrap import AppContext
from tanso_mcp.db.models import (
    CreditGrant,
    CreditPool,
    CreditPoolSubscription,
    CreditTransaction,
    Customer,
    Entitlement,
    Feature,
    PlanFeature,
    Subscription,
)
from tanso_mcp.db.scale import qty_to_int
from tanso_mcp.domain.periods import add_months
from tanso_mcp.services import customers
from tests.factories import make_plan

__all__ = ["give_credits", "ledger_problems", "make_plan", "metered_setup", "subscribe"]


async def subscribe(
    ctx: AppContext,
    env: str,
    ref: str,
    plan_id: str,
    *,
    start: datetime | None = None,
    interval: int = 1,
    active: bool = True,
) -> str:
    """An active subscription of `ref` (created if unknown) to `plan_id`, with one
    entitlement per enabled feature of the plan; the period starts at `start` (default:
    today 00:00 UTC on the system clock)."""
    now = ctx.clocks.system_now()
    start = start or now.replace(hour=0, minute=0, second=0, microsecond=0)
    async with ctx.db.unit_of_work() as s:
        c = await customers.find_by_reference(s, env, ref)
        if c is None:
            c = await customers.create_customer(s, env, now, reference_id=ref)
        sub = Subscription(
            environment_id=env,
            customer_id=c.id,
            plan_id=plan_id,
            is_active=active,
            interval_months=interval,
            grace_period_days=3,
            billing_anchor_day=start.day,
            started_at=start,
            current_period_start=start,
            current_period_end=add_months(start, interval),
            metadata_={},
            created_at=now,
            modified_at=now,
        )
        s.add(sub)
        await s.flush()
        rows = (
            await s.execute(
                select(PlanFeature.feature_id, Feature.key)
                .join(Feature, Feature.id == PlanFeature.feature_id)
                .where(PlanFeature.plan_id == plan_id)
            )
        ).all()
        for fid, key in rows:
            s.add(
                Entitlement(
                    environment_id=env,
                    customer_id=c.id,
                    subscription_id=sub.id,
                    feature_id=fid,
                    feature_key=key,
                    granted_at=now,
                )
            )
        sub_id = sub.id
    ctx.invalidate(env)
    return sub_id


async def give_credits(
    ctx: AppContext,
    env: str,
    ref: str,
    denomination: str,
    amount: str | Decimal,
    *,
    hard_limit: bool = False,
    subscription_id: str | None = None,
    draw_priority: int = 0,
    draw_limit: str | None = None,
    expires_at: datetime | None = None,
    created_at: datetime | None = None,
    grant_type: str = "PURCHASED",
) -> str:
    """Grant credits to the customer's pool of `denomination` (created when missing, with
    `hard_limit`), optionally linked to a subscription; writes the GRANT ledger row."""
    now = created_at or ctx.clocks.system_now()
    q = qty_to_int(Decimal(amount))
    async with ctx.db.unit_of_work() as s:
        c = await s.scalar(
            select(Customer).where(Customer.environment_id == env, Customer.reference_id == ref)
        )
        assert c is not None, ref
        pool = await s.scalar(
            select(CreditPool).where(
                CreditPool.customer_id == c.id, CreditPool.denomination == denomination
            )
        )
        if pool is None:
            pool = CreditPool(
                environment_id=env,
                customer_id=c.id,
                denomination=denomination,
                name=f"{denomination} - {c.id}",
                currency="USD",
                balance_q=0,
                hard_limit=hard_limit,
                created_at=now,
                modified_at=now,
            )
            s.add(pool)
            await s.flush()
        before = pool.balance_q
        grant = CreditGrant(
            environment_id=env,
            pool_id=pool.id,
            grant_type=grant_type,
            amount_q=q,
            remaining_q=q,
            expires_at=expires_at,
            idempotency_key=f"test_grant_{pool.id}_{before}_{now.timestamp()}_{q}",
            subscription_id=subscription_id,
            created_at=now,
        )
        s.add(grant)
        await s.flush()
        pool.balance_q = before + q
        pool.total_granted_q = pool.total_granted_q + q
        s.add(
            CreditTransaction(
                environment_id=env,
                pool_id=pool.id,
                grant_id=grant.id,
                type="GRANT",
                amount_q=q,
                balance_before_q=before,
                balance_after_q=before + q,
                created_at=now,
            )
        )
        if subscription_id is not None:
            link = await s.scalar(
                select(CreditPoolSubscription).where(
                    CreditPoolSubscription.pool_id == pool.id,
                    CreditPoolSubscription.subscription_id == subscription_id,
                )
            )
            if link is None:
                s.add(
                    CreditPoolSubscription(
                        environment_id=env,
                        pool_id=pool.id,
                        subscription_id=subscription_id,
                        draw_priority=draw_priority,
                        draw_limit_q=None
                        if draw_limit is None
                        else qty_to_int(Decimal(draw_limit)),
                    )
                )
        pool_id = pool.id
    ctx.invalidate(env)
    return pool_id


async def ledger_problems(ctx: AppContext, env: str) -> list[str]:
    """Credit invariant (SPEC §3): balance = Σ ledger, grant remainders sum to the
    balance, nothing negative under a hard limit, totals consistent."""
    problems: list[str] = []
    async with ctx.db.reader() as s:
        pools = (
            (await s.execute(select(CreditPool).where(CreditPool.environment_id == env)))
            .scalars()
            .all()
        )
        for p in pools:
            ledger = await s.scalar(
                select(func.coalesce(func.sum(CreditTransaction.amount_q), 0)).where(
                    CreditTransaction.pool_id == p.id
                )
            )
            grants = await s.scalar(
                select(func.coalesce(func.sum(CreditGrant.remaining_q), 0)).where(
                    CreditGrant.pool_id == p.id, CreditGrant.voided_at.is_(None)
                )
            )
            negative = await s.scalar(
                select(func.count())
                .select_from(CreditGrant)
                .where(CreditGrant.pool_id == p.id, CreditGrant.remaining_q < 0)
            )
            bad_rows = await s.scalar(
                select(func.count())
                .select_from(CreditTransaction)
                .where(
                    CreditTransaction.pool_id == p.id,
                    CreditTransaction.balance_after_q
                    != CreditTransaction.balance_before_q + CreditTransaction.amount_q,
                )
            )
            if int(ledger) != p.balance_q:
                problems.append(f"pool {p.id}: balance {p.balance_q} != ledger {ledger}")
            if int(grants) != p.balance_q:
                problems.append(f"pool {p.id}: balance {p.balance_q} != grants {grants}")
            if p.hard_limit and p.balance_q < 0:
                problems.append(f"pool {p.id}: negative balance under a hard limit")
            if negative:
                problems.append(f"pool {p.id}: {negative} grant(s) below zero")
            if bad_rows:
                problems.append(f"pool {p.id}: {bad_rows} ledger row(s) with before+amount!=after")
    return problems


async def metered_setup(
    ctx: AppContext,
    env: str,
    *,
    rule: dict[str, Any] | None = None,
    ref: str = "cus_1",
    feature: str = "api_calls",
    plan_key: str = "metered",
    timing: str = "IN_ARREARS",
    extra_features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plan with one metered feature (default: usage pricing, price 0.10, limit 100)
    and `ref` subscribed to it."""
    import json

    rule = rule or {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "calls",
            "price_per_unit": "0.10",
            "max_usage": 100,
        }
    }
    features = {feature: json.dumps(rule)}
    features.update(extra_features or {})
    plan = await make_plan(ctx, env, key=plan_key, price="10.00", timing=timing, features=features)
    sub_id = await subscribe(ctx, env, ref, plan["plan_id"])
    return {**plan, "subscription_id": sub_id, "ref": ref, "feature": feature}


def at(base: datetime, **delta: float) -> datetime:
    return base + timedelta(**delta)

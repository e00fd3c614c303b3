"""Factories for the metering tests: subscriptions, entitlements and credit pools written
with the ORM models directly (the billing services own those lifecycles; these helpers
only set up the rows a metering scenario needs), plus the credit ledger invariant."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from tanso_mcp.bootstrap import AppContext
from tanso_mcp.db.models import (
    CreditPoolSubscription,
    Customer,
    Entitlement,
    Feature,
    PlanFeature,
    Subscription,
)
from tanso_mcp.db.scale import qty_to_int
from tanso_mcp.domain.periods import add_months
from tanso_mcp.services import credits, customers
from tanso_mcp.services.metering.inputs import EventIn, parse_event
from tests.factories import make_plan

__all__ = [
    "give_credits",
    "ledger_problems",
    "make_plan",
    "metered_setup",
    "subscribe",
    "usage_events",
]


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
    hard_limit: bool | None = None,
    subscription_id: str | None = None,
    draw_limit: str | None = None,
    expires_at: datetime | None = None,
    created_at: datetime | None = None,
    grant_type: str = "PURCHASED",
) -> str:
    """Grant credits to the customer's pool of `denomination` through billing's credits
    service (pool created on first use, `hard_limit` applied), optionally linked to a
    subscription with a draw limit; returns the pool id."""
    now = created_at or ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        c = await s.scalar(
            select(Customer).where(Customer.environment_id == env, Customer.reference_id == ref)
        )
        assert c is not None, ref
        pool = await credits.ensure_pool(s, env, c.id, denomination, now, hard_limit=hard_limit)
        key = f"test_grant_{pool.id}_{pool.total_granted_q}_{now.timestamp()}_{amount}"
        await credits.grant(
            s,
            env,
            pool,
            qty_to_int(Decimal(amount)),
            grant_type,
            now,
            idempotency_key=key,
            expires_at=expires_at,
            subscription_id=subscription_id,
        )
        if subscription_id is not None:
            await credits.link_subscription(s, env, pool.id, subscription_id)
            if draw_limit is not None:
                await s.execute(
                    update(CreditPoolSubscription)
                    .where(
                        CreditPoolSubscription.pool_id == pool.id,
                        CreditPoolSubscription.subscription_id == subscription_id,
                    )
                    .values(draw_limit_q=qty_to_int(Decimal(draw_limit)))
                )
        pool_id = pool.id
    ctx.invalidate(env)
    return pool_id


async def ledger_problems(ctx: AppContext, env: str) -> list[str]:
    """Billing's credit invariant check (balance = Σ ledger = Σ grant remainders, totals
    consistent, nothing negative)."""
    async with ctx.db.reader() as s:
        return await credits.ledger_problems(s, env)


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


def usage_events(
    ctx: AppContext, env: str, keys: list[str], *, feature: str, name: str, units: int = 1
) -> list[EventIn]:
    """One parsed usage event of ``cus_1`` on ``feature`` per idempotency key, dated now,
    as the writer receives them."""
    now = ctx.clocks.system_now()
    return [
        parse_event(
            {
                "eventIdempotencyKey": key,
                "eventName": name,
                "customerReferenceId": "cus_1",
                "featureKey": feature,
                "usageUnits": units,
            },
            environment_id=env,
            now=now,
            future_skew_seconds=300,
        )
        for key in keys
    ]

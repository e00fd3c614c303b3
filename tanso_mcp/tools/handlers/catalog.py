"""Catalog and customer tools. Each handler opens one unit of work and calls the same
service functions as the REST API."""

from __future__ import annotations

from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import catalog, customers, stripe_sync, views


async def _now(app: AppContext, p: Principal):
    return await app.now(p)


# --------------------------------------------------------------------------- read


async def list_plans(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        plans, _ = await catalog.list_plans(s, p.environment_id, active_only=True)
        return await views.plans_with_features(s, plans)


async def list_features(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        rows, _ = await catalog.list_features(s, p.environment_id)
    return [views.feature_view(f) for f in rows]


async def get_feature(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        return views.feature_view(
            await catalog.feature_by_key(s, p.environment_id, params.featureKey)
        )


async def get_customer(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        c = await customers.by_reference(s, p.environment_id, params.customerReferenceId)
        return await views.customer_view(s, c)


# --------------------------------------------------------------------------- customers


async def create_customer(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        c = await customers.create_customer(
            s,
            p.environment_id,
            now,
            reference_id=params.customerReferenceId,
            email=params.email,
            first_name=params.firstName,
            last_name=params.lastName,
        )
        view = await views.customer_view(s, c)
    if ext := await stripe_sync.after_customer_write(app, p.environment_id, c.id):
        view["stripeCustomerId"] = ext
    await app.emit("customer.created", p, {"customer": view})
    return view


async def update_customer(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        c = await customers.update_customer(
            s,
            p.environment_id,
            now,
            params.customerReferenceId,
            firstName=params.firstName,
            lastName=params.lastName,
            email=params.email,
            phoneNumber=params.phoneNumber,
        )
        view = await views.customer_view(s, c)
    app.invalidate(p.environment_id)
    await stripe_sync.after_customer_write(app, p.environment_id, c.id)
    await app.emit("customer.updated", p, {"customer": view})
    return view


# --------------------------------------------------------------------------- admin catalog


async def admin_list_features(app: AppContext, p: Principal, params: Any):
    return await list_features(app, p, params)


async def admin_list_plans(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        plans, _ = await catalog.list_plans(s, p.environment_id)
    return [views.plan_view(x) for x in plans]


async def admin_create_feature(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        f = await catalog.create_feature(
            s,
            p.environment_id,
            now,
            key=params.key,
            name=params.name,
            description=params.description,
        )
    app.invalidate(p.environment_id)
    return views.feature_view(f)


async def admin_update_feature(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        f = await catalog.update_feature(
            s,
            p.environment_id,
            now,
            params.featureId,
            key=params.key,
            name=params.name,
            description=params.description,
            isEnabled=params.isEnabled,
        )
    app.invalidate(p.environment_id)
    return views.feature_view(f)


async def admin_create_plan(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        plan = await catalog.create_plan(
            s,
            p.environment_id,
            now,
            key=params.key,
            name=params.name,
            price_amount=params.priceAmount,
            description=params.description,
            interval_months=params.intervalMonths,
            billing_timing=params.billingTiming,
            credit_allocations=params.creditAllocations,
        )
        (out,) = await views.plans_with_features(s, [plan], admin=True)
    app.invalidate(p.environment_id)
    return out


async def admin_update_plan(app: AppContext, p: Principal, params: Any):
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        plan = await catalog.update_plan(
            s,
            p.environment_id,
            now,
            params.planId,
            key=params.key,
            name=params.name,
            priceAmount=params.priceAmount,
            description=params.description,
            intervalMonths=params.intervalMonths,
            billingTiming=params.billingTiming,
            status=params.status,
            creditAllocations=params.creditAllocations,
        )
        (out,) = await views.plans_with_features(s, [plan], admin=True)
    app.invalidate(p.environment_id)
    return out


async def admin_get_plan_with_features(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        plan = await catalog.plan_by_id(s, p.environment_id, params.planId)
        (out,) = await views.plans_with_features(s, [plan], admin=True)
    return out


async def admin_get_feature_rule(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        pf = await catalog.get_rule(s, p.environment_id, params.planId, params.featureId)
        f = await catalog.feature_by_id(s, p.environment_id, params.featureId)
    return views.rule_view(pf, f)


async def _write_rule(service, app: AppContext, p: Principal, params: Any):
    """Link or update a plan-feature rule (the two tools take the same arguments)."""
    now = await _now(app, p)
    async with app.db.unit_of_work() as s:
        pf = await service(
            s,
            p.environment_id,
            now,
            plan_id=params.planId,
            feature_id=params.featureId,
            rule_type=params.type,
            value_json=params.valueJson,
            is_enabled=params.isEnabled,
        )
        f = await catalog.feature_by_id(s, p.environment_id, params.featureId)
    app.invalidate(p.environment_id)
    return views.rule_view(pf, f)


async def admin_link_feature_to_plan(app: AppContext, p: Principal, params: Any):
    return await _write_rule(catalog.link_feature, app, p, params)


async def admin_update_feature_rule(app: AppContext, p: Principal, params: Any):
    return await _write_rule(catalog.update_rule, app, p, params)


async def admin_unlink_feature_from_plan(app: AppContext, p: Principal, params: Any):
    async with app.db.unit_of_work() as s:
        pf = await catalog.unlink_feature(s, p.environment_id, params.planId, params.featureId)
    app.invalidate(p.environment_id)
    return {"success": True, "message": "feature unlinked from plan", "ruleId": pf.id}


async def admin_unlink_feature_from_plan_preview(app: AppContext, p: Principal, params: Any):
    """What unlinking would do: the rule removed and how many live subscriptions of the
    plan would stop granting the feature."""
    from sqlalchemy import func, select

    from ...db.models import Subscription

    async with app.db.reader() as s:
        pf = await catalog.get_rule(s, p.environment_id, params.planId, params.featureId)
        plan = await catalog.plan_by_id(s, p.environment_id, params.planId)
        f = await catalog.feature_by_id(s, p.environment_id, params.featureId)
        active = await s.scalar(
            select(func.count())
            .select_from(Subscription)
            .where(Subscription.plan_id == plan.id, Subscription.is_active.is_(True))
        )
    return {
        "entities": {
            "plan": {"id": plan.id, "key": plan.key, "status": plan.status},
            "feature": {"id": f.id, "key": f.key},
            "rule": views.rule_view(pf),
        },
        "moneyMoved": "0",
        "entitlementsLost": {"featureKey": f.key, "activeSubscriptions": int(active or 0)},
    }

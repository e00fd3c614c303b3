"""Catalog and customer tools: each write calls the one use case (services/customers.py,
services/catalog_ops.py) the REST API calls too; reads call the same service functions."""

from __future__ import annotations

from typing import Any

from ...context import AppContext
from ...principal import Principal
from ...services import catalog, catalog_ops, customers, views

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
        return await customers.customer_view(s, c)


# --------------------------------------------------------------------------- customers


async def create_customer(app: AppContext, p: Principal, params: Any):
    view = await customers.create(
        app,
        p,
        reference_id=params.customerReferenceId,
        email=params.email,
        first_name=params.firstName,
        last_name=params.lastName,
        phone_number=getattr(params, "phoneNumber", None),
    )
    return {"success": True, "message": "Customer created.", "customer": view}


async def update_customer(app: AppContext, p: Principal, params: Any):
    view = await customers.update(
        app,
        p,
        params.customerReferenceId,
        firstName=params.firstName,
        lastName=params.lastName,
        email=params.email,
        phoneNumber=params.phoneNumber,
    )
    return {"success": True, "message": "Customer updated.", "customer": view}


# --------------------------------------------------------------------------- admin catalog


async def admin_list_features(app: AppContext, p: Principal, params: Any):
    return await list_features(app, p, params)


async def admin_list_plans(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        plans, _ = await catalog.list_plans(s, p.environment_id)
    return [views.plan_view(x) for x in plans]


async def admin_create_feature(app: AppContext, p: Principal, params: Any):
    f = await catalog_ops.create_feature(
        app, p, key=params.key, name=params.name, description=params.description
    )
    return {"success": True, "message": "Feature created.", "feature": f}


async def admin_update_feature(app: AppContext, p: Principal, params: Any):
    f = await catalog_ops.update_feature(
        app,
        p,
        params.featureId,
        key=params.key,
        name=params.name,
        description=params.description,
        isEnabled=params.isEnabled,
    )
    return {"success": True, "message": "Feature updated.", "feature": f}


async def admin_create_plan(app: AppContext, p: Principal, params: Any):
    out = await catalog_ops.create_plan(
        app,
        p,
        key=params.key,
        name=params.name,
        price_amount=params.priceAmount,
        description=params.description,
        interval_months=params.intervalMonths,
        billing_timing=params.billingTiming,
        credit_allocations=params.creditAllocations,
    )
    return {"success": True, "message": "Plan created (status DRAFT).", **out}


async def admin_update_plan(app: AppContext, p: Principal, params: Any):
    out = await catalog_ops.update_plan(
        app,
        p,
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
    return {"success": True, "message": "Plan updated.", **out}


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


def _rule(params: Any) -> dict[str, Any]:
    """Link and update take the same arguments."""
    return {
        "plan_id": params.planId,
        "feature_id": params.featureId,
        "rule_type": params.type,
        "value_json": params.valueJson,
        "is_enabled": params.isEnabled,
    }


async def admin_link_feature_to_plan(app: AppContext, p: Principal, params: Any):
    rule = await catalog_ops.link_feature(app, p, **_rule(params))
    return {"success": True, "message": "Feature linked to plan.", "rule": rule}


async def admin_update_feature_rule(app: AppContext, p: Principal, params: Any):
    rule = await catalog_ops.update_rule(app, p, **_rule(params))
    return {"success": True, "message": "Rule updated.", "rule": rule}


async def admin_unlink_feature_from_plan(app: AppContext, p: Principal, params: Any):
    return await catalog_ops.unlink_feature(app, p, params.planId, params.featureId)


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

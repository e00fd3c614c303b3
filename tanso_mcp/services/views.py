"""Presenters: the answer shapes declared in services/outputs.py, shared by the REST API and
the MCP tools."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import (
    CreditModel,
    CreditPool,
    Customer,
    Feature,
    Plan,
    PlanCreditAllocation,
    PlanFeature,
)
from ..db.scale import int_to_qty
from ..domain.money import from_minor
from ..domain.rules import parse_rule_value, render_pricing
from . import catalog


def feature_view(f: Feature) -> dict[str, Any]:
    return {
        "id": f.id,
        "key": f.key,
        "name": f.name,
        "description": f.description,
        "isEnabled": f.is_enabled,
        "createdAt": f.created_at,
        "modifiedAt": f.modified_at,
    }


def plan_view(p: Plan) -> dict[str, Any]:
    return {
        "id": p.id,
        "key": p.key,
        "name": p.name,
        "description": p.description,
        "priceAmount": from_minor(p.price_minor, p.currency),
        "currency": p.currency,
        "intervalMonths": p.interval_months,
        "billingTiming": p.billing_timing,
        "status": p.status,
        "createdAt": p.created_at,
        "modifiedAt": p.modified_at,
    }


def allocation_view(a: PlanCreditAllocation, m: CreditModel) -> dict[str, Any]:
    return {
        "id": a.id,
        "creditModelId": m.id,
        "creditModelName": m.name,
        "denomination": m.denomination,
        "creditAmount": int_to_qty(a.credit_amount_q),
        "grantExpiresMonths": a.grant_expires_months,
        "hardLimit": m.hard_limit if a.hard_limit is None else a.hard_limit,
        "rolloverPolicy": m.rollover_policy,
        "rolloverCap": int_to_qty(m.rollover_cap_q) if m.rollover_cap_q is not None else None,
        "createdAt": a.created_at,
    }


def rule_view(pf: PlanFeature, f: Feature | None = None) -> dict[str, Any]:
    out = {
        "id": pf.id,
        "planId": pf.plan_id,
        "featureId": pf.feature_id,
        "type": pf.type,
        "value": pf.value,
        "isEnabled": pf.is_enabled,
        "createdAt": pf.created_at,
        "modifiedAt": pf.modified_at,
    }
    if f is not None:
        out["featureKey"] = f.key
    return out


def client_feature_view(pf: PlanFeature, f: Feature) -> dict[str, Any]:
    """A plan's feature as the client catalog shows it (pricingType + pricing)."""
    rendered = render_pricing(parse_rule_value(pf.value) if pf.value else None)
    out = {
        "id": f.id,
        "name": f.name,
        "key": f.key,
        "description": f.description,
        "isEnabled": pf.is_enabled and f.is_enabled,
    }
    out.update(rendered)
    if pf.value and pf.value.get("credits"):
        out["credits"] = pf.value["credits"]
    return out


async def plans_with_features(
    s: AsyncSession, plans: list[Plan], *, admin: bool = False
) -> list[dict[str, Any]]:
    rules = await catalog.plan_rules(s, [p.id for p in plans])
    out = []
    for p in plans:
        allocations = await catalog.plan_allocations(s, p.id)
        feats = [client_feature_view(pf, f) for pf, f in rules[p.id]]
        if admin:
            for item, (pf, _f) in zip(feats, rules[p.id], strict=True):
                item["rule"] = rule_view(pf)
        out.append(
            {
                "plan": plan_view(p),
                "features": feats,
                "creditAllocations": [allocation_view(a, m) for a, m in allocations],
            }
        )
    return out


def pool_view(p: CreditPool) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "denomination": p.denomination,
        "balance": int_to_qty(p.balance_q),
        "totalGranted": int_to_qty(p.total_granted_q),
        "totalConsumed": int_to_qty(p.total_consumed_q),
        "totalExpired": int_to_qty(p.total_expired_q),
        "hardLimit": p.hard_limit,
        "rolloverPolicy": p.rollover_policy,
        "rolloverCap": int_to_qty(p.rollover_cap_q) if p.rollover_cap_q is not None else None,
        "status": p.status,
        "currency": p.currency,
        "createdAt": p.created_at,
        "modifiedAt": p.modified_at,
    }


def customer_base_view(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "customerReferenceId": c.reference_id,
        "externalClientCustomerId": c.reference_id,
        "email": c.email,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "phoneNumber": c.phone_number,
        "source": c.source,
        "stripeCustomerId": c.provider_customer_id,
        "createdAt": c.created_at,
        "modifiedAt": c.modified_at,
    }

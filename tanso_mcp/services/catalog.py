"""Catalog use cases: features, plans, plan-feature rules, credit models and plan
credit allocations. Every query is scoped to the caller's environment."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, overload

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import CreditModel, Feature, Plan, PlanCreditAllocation, PlanFeature
from ..db.scale import int_to_qty, qty_to_int
from ..domain.credits import CreditAllocation, parse_credit_allocations
from ..domain.money import from_minor, normalize_currency, parse_money_amount, to_decimal, to_minor
from ..domain.rules import RuleValue, parse_rule_value
from ..errors import Conflict, InvalidRequest, NotFound
from .plan_entitlements import sync_feature

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
DENOM_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
PLAN_STATUSES = ("DRAFT", "ACTIVE", "ARCHIVED")
TIMINGS = ("IN_ADVANCE", "IN_ARREARS")
ROLLOVER = ("NONE", "FULL", "CAPPED")
# status changes a plan may make
TRANSITIONS = {("DRAFT", "ACTIVE"), ("ACTIVE", "ARCHIVED"), ("ARCHIVED", "ACTIVE")}
LOCKED_WHEN_ACTIVE = (
    "key",
    "priceAmount",
    "intervalMonths",
    "billingTiming",
    "currency",
    "creditAllocations",
)


def check_key(value: Any, field: str = "key") -> str:
    if not isinstance(value, str) or not KEY_RE.match(value):
        raise InvalidRequest(
            f"{field} must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
            field=field,
        )
    return value


@overload
def check_text(
    value: Any, field: str, *, max_len: int = 200, required: Literal[True] = True
) -> str: ...


@overload
def check_text(value: Any, field: str, *, max_len: int = 200, required: bool) -> str | None: ...


def check_text(value: Any, field: str, *, max_len: int = 200, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    value = value.strip()
    if required and not value:
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if len(value) > max_len:
        raise InvalidRequest(f"{field} must be at most {max_len} characters", field=field)
    return value


def parse_interval(value: Any, field: str = "intervalMonths") -> int:
    d = to_decimal(value, field)
    if d != d.to_integral_value() or not 1 <= d <= 120:
        raise InvalidRequest(f"{field} must be a whole number of months from 1 to 120", field=field)
    return int(d)


def parse_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in choices:
        raise InvalidRequest(f"{field} must be one of {', '.join(choices)}", field=field)
    return value.upper()


# --------------------------------------------------------------------------- features


async def feature_by_id(s: AsyncSession, env: str, feature_id: str) -> Feature:
    f = await s.scalar(
        select(Feature).where(Feature.environment_id == env, Feature.id == feature_id)
    )
    if f is None:
        raise NotFound(f"feature {feature_id} not found", field="featureId")
    return f


async def feature_by_key(s: AsyncSession, env: str, key: str) -> Feature:
    f = await s.scalar(select(Feature).where(Feature.environment_id == env, Feature.key == key))
    if f is None:
        raise NotFound(f"feature {key!r} not found", field="featureKey")
    return f


async def list_features(s: AsyncSession, env: str, limit: int = 500, offset: int = 0):
    total = await s.scalar(
        select(func.count()).select_from(Feature).where(Feature.environment_id == env)
    )
    rows = (
        (
            await s.execute(
                select(Feature)
                .where(Feature.environment_id == env)
                .order_by(Feature.created_at, Feature.id)
                .limit(limit)
                .offset(offset)
            )
        )
        .scalars()
        .all()
    )
    return list(rows), int(total or 0)


async def _key_taken(s: AsyncSession, model, env: str, key: str, exclude: str | None = None):
    q = select(model.id).where(model.environment_id == env, model.key == key)
    if exclude:
        q = q.where(model.id != exclude)
    return (await s.scalar(q)) is not None


async def create_feature(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    key: Any,
    name: Any,
    description: Any = None,
    is_enabled: bool = True,
    source: str = "API",
) -> Feature:
    key = check_key(key)
    name = check_text(name, "name")
    description = check_text(description, "description", max_len=4000, required=False)
    if await _key_taken(s, Feature, env, key):
        raise Conflict(f"a feature with key {key!r} already exists", field="key")
    f = Feature(
        environment_id=env,
        key=key,
        name=name,
        description=description,
        is_enabled=bool(is_enabled),
        source=source,
        metadata_={},
        created_at=now,
        modified_at=now,
    )
    s.add(f)
    await s.flush()
    return f


async def update_feature(
    s: AsyncSession, env: str, now: datetime, feature_id: str, **changes: Any
) -> Feature:
    f = await feature_by_id(s, env, feature_id)
    if changes.get("key") is not None:
        key = check_key(changes["key"])
        if key != f.key and await _key_taken(s, Feature, env, key, exclude=f.id):
            raise Conflict(f"a feature with key {key!r} already exists", field="key")
        f.key = key
    if changes.get("name") is not None:
        f.name = check_text(changes["name"], "name")
    if changes.get("description") is not None:
        f.description = check_text(
            changes["description"], "description", max_len=4000, required=False
        )
    if changes.get("isEnabled") is not None:
        f.is_enabled = bool(changes["isEnabled"])
    f.modified_at = now
    await s.flush()
    if changes.get("isEnabled") is not None or changes.get("key") is not None:
        await sync_feature(s, env, now, f.id)  # every subscription, at once
    return f


# --------------------------------------------------------------------------- credit models


async def upsert_credit_model(
    s: AsyncSession,
    env: str,
    now: datetime,
    denomination: str,
    *,
    hard_limit: bool | None = None,
    rollover_policy: str | None = None,
    rollover_cap: Decimal | None = None,
) -> CreditModel:
    """A denomination's properties live in its credit model: created on first use,
    updated by later allocations that state them."""
    cm = await s.scalar(
        select(CreditModel).where(
            CreditModel.environment_id == env, CreditModel.denomination == denomination
        )
    )
    if cm is None:
        cm = CreditModel(
            environment_id=env,
            denomination=denomination,
            name=denomination,
            hard_limit=bool(hard_limit),
            rollover_policy=rollover_policy or "NONE",
            rollover_cap_q=qty_to_int(rollover_cap) if rollover_cap is not None else None,
            created_at=now,
            modified_at=now,
        )
        s.add(cm)
    else:
        if hard_limit is not None:
            cm.hard_limit = hard_limit
        if rollover_policy is not None:
            cm.rollover_policy = rollover_policy
        if rollover_cap is not None:
            cm.rollover_cap_q = qty_to_int(rollover_cap)
        cm.modified_at = now
    await s.flush()
    return cm


async def _replace_allocations(
    s: AsyncSession, env: str, now: datetime, plan: Plan, allocations: list[CreditAllocation]
) -> None:
    await s.execute(delete(PlanCreditAllocation).where(PlanCreditAllocation.plan_id == plan.id))
    for a in allocations:
        cm = await upsert_credit_model(
            s,
            env,
            now,
            a.denomination,
            hard_limit=a.hard_limit,
            rollover_policy=a.rollover_policy.value if a.rollover_policy else None,
            rollover_cap=a.rollover_cap,
        )
        s.add(
            PlanCreditAllocation(
                environment_id=env,
                plan_id=plan.id,
                credit_model_id=cm.id,
                credit_amount_q=qty_to_int(a.credit_amount),
                grant_expires_months=a.grant_expires_months,
                hard_limit=a.hard_limit,
                created_at=now,
            )
        )
    await s.flush()


async def plan_allocations(
    s: AsyncSession, plan_id: str
) -> list[tuple[PlanCreditAllocation, CreditModel]]:
    rows = await s.execute(
        select(PlanCreditAllocation, CreditModel)
        .join(CreditModel, CreditModel.id == PlanCreditAllocation.credit_model_id)
        .where(PlanCreditAllocation.plan_id == plan_id)
        .order_by(CreditModel.denomination)
    )
    return [(a, m) for a, m in rows]


# --------------------------------------------------------------------------- plans


async def plan_by_id(s: AsyncSession, env: str, plan_id: str, field: str = "planId") -> Plan:
    p = await s.scalar(select(Plan).where(Plan.environment_id == env, Plan.id == plan_id))
    if p is None:
        raise NotFound(f"plan {plan_id} not found", field=field)
    return p


async def plan_by_key(s: AsyncSession, env: str, key: str, field: str = "planKey") -> Plan:
    p = await s.scalar(select(Plan).where(Plan.environment_id == env, Plan.key == key))
    if p is None:
        raise NotFound(f"plan {key!r} not found", field=field)
    return p


async def list_plans(
    s: AsyncSession, env: str, *, active_only: bool = False, limit: int = 500, offset: int = 0
) -> tuple[list[Plan], int]:
    q = select(Plan).where(Plan.environment_id == env)
    cq = select(func.count()).select_from(Plan).where(Plan.environment_id == env)
    if active_only:
        q = q.where(Plan.status == "ACTIVE")
        cq = cq.where(Plan.status == "ACTIVE")
    rows = (
        (await s.execute(q.order_by(Plan.created_at, Plan.id).limit(limit).offset(offset)))
        .scalars()
        .all()
    )
    return list(rows), int(await s.scalar(cq) or 0)


async def create_plan(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    key: Any,
    name: Any,
    price_amount: Any,
    description: Any = None,
    interval_months: Any = None,
    billing_timing: Any = None,
    currency: Any = None,
    credit_allocations: Any = None,
) -> Plan:
    key = check_key(key)
    name = check_text(name, "name")
    description = check_text(description, "description", max_len=4000, required=False)
    currency = normalize_currency(currency or "USD", "currency")
    if price_amount is None:
        raise InvalidRequest("priceAmount is required", field="priceAmount")
    price = parse_money_amount(price_amount, currency, "priceAmount")
    interval = parse_interval(interval_months) if interval_months is not None else 1
    timing = (
        parse_choice(billing_timing, "billingTiming", TIMINGS) if billing_timing else "IN_ADVANCE"
    )
    allocations = (
        parse_credit_allocations(credit_allocations) if credit_allocations is not None else []
    )
    if await _key_taken(s, Plan, env, key):
        raise Conflict(f"a plan with key {key!r} already exists", field="key")
    plan = Plan(
        environment_id=env,
        key=key,
        name=name,
        description=description,
        price_minor=to_minor(price, currency),
        currency=currency,
        interval_months=interval,
        billing_timing=timing,
        status="DRAFT",
        metadata_={},
        created_at=now,
        modified_at=now,
    )
    s.add(plan)
    await s.flush()
    if allocations:
        await _replace_allocations(s, env, now, plan, allocations)
    return plan


async def update_plan(
    s: AsyncSession, env: str, now: datetime, plan_id: str, **changes: Any
) -> Plan:
    """Partial update. DRAFT: everything mutable. ACTIVE: key, price, interval, timing,
    currency and credit allocations are locked. ARCHIVED: only a status change."""
    plan = await plan_by_id(s, env, plan_id)
    given = {k: v for k, v in changes.items() if v is not None}
    new_status = (
        parse_choice(given.pop("status"), "status", PLAN_STATUSES) if "status" in given else None
    )
    if plan.status == "ARCHIVED" and given:
        name = sorted(given)[0]
        raise InvalidRequest(
            f"plan is ARCHIVED: only its status can change ({name} given)", field=name
        )
    if plan.status == "ACTIVE":
        for name in LOCKED_WHEN_ACTIVE:
            if name in given:
                raise InvalidRequest(f"{name} is locked once a plan is ACTIVE", field=name)
    if "key" in given:
        key = check_key(given["key"])
        if key != plan.key and await _key_taken(s, Plan, env, key, exclude=plan.id):
            raise Conflict(f"a plan with key {key!r} already exists", field="key")
        plan.key = key
    if "name" in given:
        plan.name = check_text(given["name"], "name")
    if "description" in given:
        plan.description = check_text(
            given["description"], "description", max_len=4000, required=False
        )
    if "currency" in given:
        currency = normalize_currency(given["currency"], "currency")
        price = from_minor(plan.price_minor, plan.currency)
        plan.price_minor = to_minor(parse_money_amount(price, currency, "currency"), currency)
        plan.currency = currency
    if "priceAmount" in given:
        plan.price_minor = to_minor(
            parse_money_amount(given["priceAmount"], plan.currency, "priceAmount"), plan.currency
        )
    if "intervalMonths" in given:
        plan.interval_months = parse_interval(given["intervalMonths"])
    if "billingTiming" in given:
        plan.billing_timing = parse_choice(given["billingTiming"], "billingTiming", TIMINGS)
    if "creditAllocations" in given:
        await _replace_allocations(
            s, env, now, plan, parse_credit_allocations(given["creditAllocations"])
        )
    if new_status is not None and new_status != plan.status:
        if (plan.status, new_status) not in TRANSITIONS:
            raise InvalidRequest(
                f"a plan cannot go from {plan.status} to {new_status} "
                "(allowed: DRAFT→ACTIVE, ACTIVE→ARCHIVED, ARCHIVED→ACTIVE)",
                field="status",
            )
        if plan.status == "DRAFT":
            await _check_activation(s, plan)
        plan.status = new_status
    plan.modified_at = now
    await s.flush()
    return plan


async def _check_activation(s: AsyncSession, plan: Plan) -> None:
    missing = [n for n, v in (("name", plan.name), ("description", plan.description)) if not v]
    if missing:
        raise InvalidRequest(
            f"a plan needs a {missing[0]} before it can be ACTIVE", field=missing[0]
        )
    links = await s.scalar(
        select(func.count()).select_from(PlanFeature).where(PlanFeature.plan_id == plan.id)
    )
    if not links:
        raise InvalidRequest(
            "a plan needs at least one linked feature before it can be ACTIVE "
            "(adminLinkFeatureToPlan)",
            field="status",
        )


# --------------------------------------------------------------------------- rules


def rule_value(pf: PlanFeature) -> RuleValue | None:
    return parse_rule_value(pf.value) if pf.value else None


async def get_rule(s: AsyncSession, env: str, plan_id: str, feature_id: str) -> PlanFeature:
    await plan_by_id(s, env, plan_id)
    await feature_by_id(s, env, feature_id)
    pf = await s.scalar(
        select(PlanFeature).where(
            PlanFeature.plan_id == plan_id, PlanFeature.feature_id == feature_id
        )
    )
    if pf is None:
        raise NotFound("this feature is not linked to this plan", field="featureId")
    return pf


def _check_rule_type(rule_type: Any) -> str:
    if rule_type is not None and (not isinstance(rule_type, str) or rule_type.upper() != "BASE"):
        raise InvalidRequest("type must be BASE", field="type")
    return "BASE"


async def link_feature(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    plan_id: str,
    feature_id: str,
    rule_type: Any = None,
    value_json: Any = None,
    is_enabled: Any = None,
) -> PlanFeature:
    plan = await plan_by_id(s, env, plan_id)
    await feature_by_id(s, env, feature_id)
    _check_rule_type(rule_type)
    if plan.status == "ARCHIVED":
        raise InvalidRequest("plan is ARCHIVED: its features cannot change", field="planId")
    value = parse_rule_value(value_json, "valueJson")
    exists = await s.scalar(
        select(PlanFeature.id).where(
            PlanFeature.plan_id == plan_id, PlanFeature.feature_id == feature_id
        )
    )
    if exists is not None:
        raise Conflict(
            "this feature is already linked to this plan; use adminUpdateFeatureRule",
            field="featureId",
        )
    pf = PlanFeature(
        environment_id=env,
        plan_id=plan_id,
        feature_id=feature_id,
        type="BASE",
        value=value.to_json() if value else None,
        is_enabled=True if is_enabled is None else bool(is_enabled),
        credit_denomination=value.denomination if value else None,
        created_at=now,
        modified_at=now,
    )
    s.add(pf)
    if value and value.denomination:
        await upsert_credit_model(s, env, now, value.denomination)
    await s.flush()
    await sync_feature(s, env, now, feature_id, [plan_id])  # existing subscribers too
    return pf


async def update_rule(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    plan_id: str,
    feature_id: str,
    rule_type: Any = None,
    value_json: Any = None,
    is_enabled: Any = None,
) -> PlanFeature:
    pf = await get_rule(s, env, plan_id, feature_id)
    plan = await plan_by_id(s, env, plan_id)
    _check_rule_type(rule_type)
    if plan.status == "ARCHIVED":
        raise InvalidRequest("plan is ARCHIVED: its features cannot change", field="planId")
    if value_json is not None:
        value = parse_rule_value(value_json, "valueJson")
        pf.value = value.to_json() if value else None
        pf.credit_denomination = value.denomination if value else None
        if value and value.denomination:
            await upsert_credit_model(s, env, now, value.denomination)
    if is_enabled is not None:
        pf.is_enabled = bool(is_enabled)
    pf.modified_at = now
    await s.flush()
    if is_enabled is not None:
        await sync_feature(s, env, now, feature_id, [plan_id])  # existing subscribers too
    return pf


async def unlink_feature(
    s: AsyncSession, env: str, plan_id: str, feature_id: str, *, now: datetime
) -> PlanFeature:
    pf = await get_rule(s, env, plan_id, feature_id)
    plan = await plan_by_id(s, env, plan_id)
    if plan.status == "ARCHIVED":
        raise InvalidRequest("plan is ARCHIVED: its features cannot change", field="planId")
    if plan.status == "ACTIVE":
        others = await s.scalar(
            select(func.count())
            .select_from(PlanFeature)
            .where(PlanFeature.plan_id == plan_id, PlanFeature.feature_id != feature_id)
        )
        if not others:
            raise InvalidRequest("an ACTIVE plan must keep at least one feature", field="featureId")
    await s.execute(delete(PlanFeature).where(PlanFeature.id == pf.id))
    await sync_feature(s, env, now, feature_id, [plan_id])  # revoked from subscribers now
    return pf


async def plan_rules(
    s: AsyncSession, plan_ids: list[str]
) -> dict[str, list[tuple[PlanFeature, Feature]]]:
    out: dict[str, list[tuple[PlanFeature, Feature]]] = {pid: [] for pid in plan_ids}
    if not plan_ids:
        return out
    rows = await s.execute(
        select(PlanFeature, Feature)
        .join(Feature, Feature.id == PlanFeature.feature_id)
        .where(PlanFeature.plan_id.in_(plan_ids))
        .order_by(Feature.key)
    )
    for pf, f in rows:
        out[pf.plan_id].append((pf, f))
    return out


_ = int_to_qty  # re-exported for presenters

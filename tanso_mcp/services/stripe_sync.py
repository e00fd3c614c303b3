"""Customers and plans pushed to the payment provider (Stripe Integration mode).

Each sync follows the same steps: read what is needed, call the provider outside any
transaction with an idempotency key derived from the engine's ids, then record the
provider's ids with a conditional UPDATE (``WHERE provider_… IS NULL``), so a retry or a
concurrent sync records the same ids once. Customers are created in Stripe when they are
created here (and lazily before their first subscription, e.g. customers created by
event ingestion, which never calls Stripe); plans, their meters and metered prices are
created on first use and reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Customer, Environment, Feature, Plan, PlanFeature
from ..domain.money import from_minor
from ..domain.rules import GraduatedPricing, ResetMode
from ..errors import StripeApiError
from ..plugin.api import (
    PROVIDER_INVOICING,
    CustomerData,
    InvoicingProvider,
    MeteredPrice,
    PaymentProvider,
    PlanData,
    PriceTier,
    ProviderError,
)
from . import catalog, payments
from .stripe_setup import required, stripe_error

if TYPE_CHECKING:
    from ..bootstrap import AppContext

log = logging.getLogger("tanso_mcp.stripe")


async def provider_invoicing(
    ctx: AppContext, s: AsyncSession, env: str
) -> InvoicingProvider | None:
    """The environment's provider when it invoices itself (Stripe mode), else None
    (also for a provider claiming the capability without the methods it needs: the
    core then refuses what it cannot do, as for any capability it lacks)."""
    provider = await payments.provider_for(ctx, s, env)
    if PROVIDER_INVOICING in provider.capabilities and isinstance(provider, InvoicingProvider):
        return provider
    return None


def customer_data(c: Customer) -> CustomerData:
    name = " ".join(x for x in (c.first_name, c.last_name) if x) or None
    return CustomerData(
        customer_id=c.id,
        reference_id=c.reference_id,
        email=c.email,
        name=name,
        external_id=c.provider_customer_id,
    )


BASE_METER_SETTING = "stripeBaseFeeMeterId"


def base_price_version(plan: Plan) -> str:
    """The terms of a plan's base price; a provider price is reused only for the terms
    it was created with (prices are immutable there)."""
    return f"{plan.billing_timing}:{plan.interval_months}:{plan.currency}:{plan.price_minor}"


def metered_price_version(plan: Plan, pricing: Any) -> str:
    doc = {
        "interval": plan.interval_months,
        "currency": plan.currency,
        "unit": _number(getattr(pricing, "price_per_unit", None)),
        "tiers": [
            [_number(t.up_to), _number(t.price_per_unit), _number(t.flat_fee)]
            for t in getattr(pricing, "tiers", ())
        ],
    }
    return "m:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _number(value: Any) -> str | None:
    """One spelling per amount (0.02 and 0.020 are the same terms)."""
    if value is None:
        return None
    return format(Decimal(str(value)).normalize(), "f")


def _current(cached_id: str | None, cached_version: str | None, version: str) -> str | None:
    return cached_id if cached_id and cached_version == version else None


async def plan_data(s: AsyncSession, plan: Plan) -> PlanData:
    """The plan with its metered features (usage-priced, reset per period: features
    that accumulate across periods are never reported to a meter, so get no price).
    A cached provider price made for other terms than the plan's current ones is left
    out (``external_price_id`` None: a new price is due) and listed as retired."""
    metered = []
    retired: list[str] = []
    for pf, f in (await catalog.plan_rules(s, [plan.id]))[plan.id]:
        rv = catalog.rule_value(pf)
        if rv is None or rv.pricing is None or not pf.is_enabled:
            continue
        if rv.reset_mode == ResetMode.ACCUMULATE:
            continue
        pricing = rv.pricing
        tiers: tuple[PriceTier, ...] = ()
        unit = None
        if isinstance(pricing, GraduatedPricing):
            tiers = tuple(
                PriceTier(up_to=t.up_to, unit_price=t.price_per_unit, flat_fee=t.flat_fee)
                for t in pricing.tiers
            )
        else:
            unit = pricing.price_per_unit
        version = metered_price_version(plan, pricing)
        price_id = _current(pf.provider_price_id, pf.provider_price_version, version)
        if pf.provider_price_id and price_id is None:
            retired.append(pf.provider_price_id)
        metered.append(
            MeteredPrice(
                feature_id=f.id,
                feature_key=f.key,
                feature_name=f.name,
                unit_price=unit,
                tiers=tiers,
                external_meter_id=f.provider_meter_id,
                external_price_id=price_id,
                price_version=version,
            )
        )
    version = base_price_version(plan)
    price_id = _current(plan.provider_price_id, plan.provider_price_version, version)
    if plan.provider_price_id and price_id is None:
        retired.append(plan.provider_price_id)
    env = await s.get(Environment, plan.environment_id)
    return PlanData(
        plan_id=plan.id,
        key=plan.key,
        name=plan.name,
        price=from_minor(plan.price_minor, plan.currency),
        price_minor=plan.price_minor,
        currency=plan.currency,
        interval_months=plan.interval_months,
        billing_timing=plan.billing_timing,
        external_product_id=plan.provider_product_id,
        external_price_id=price_id,
        metered=tuple(metered),
        price_version=version,
        external_base_meter_id=(env.settings or {}).get(BASE_METER_SETTING) if env else None,
        retired_price_ids=tuple(retired),
    )


def _complete(pd: PlanData) -> bool:
    return bool(
        pd.external_product_id
        and pd.external_price_id
        and all(m.external_meter_id and m.external_price_id for m in pd.metered)
    )


async def sync_customer(
    ctx: AppContext, provider: PaymentProvider, env: str, customer_id: str
) -> CustomerData:
    """The customer as the provider knows it (created there first if needed)."""
    async with ctx.db.reader() as s:
        c = await required(s, Customer, customer_id)
    data = customer_data(c)
    if data.external_id:
        return data
    try:
        ref = await provider.ensure_customer(data, idempotency_key=f"customer:{c.id}")
    except ProviderError as exc:
        raise stripe_error(exc) from None
    if ref is None:
        return data
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(Customer)
            .where(Customer.id == c.id, Customer.provider_customer_id.is_(None))
            .values(provider_customer_id=ref.external_id)
            .execution_options(synchronize_session=False)
        )
        s.expire_all()
        return customer_data(await required(s, Customer, c.id))


async def push_customer(ctx: AppContext, env: str, customer_id: str) -> str | None:
    """After a customer was created or updated here: create or update it in Stripe.
    A failure is logged and left for the next sync (the customer's first subscription
    syncs it again); the API answer does not depend on Stripe being up."""
    async with ctx.db.reader() as s:
        provider = await provider_invoicing(ctx, s, env)
        if provider is None:
            return None
        c = await s.get(Customer, customer_id)
    if c is None:
        return None
    if c.provider_customer_id is None:
        return (await sync_customer(ctx, provider, env, customer_id)).external_id
    data = customer_data(c)
    await provider.ensure_customer(
        data, idempotency_key=f"customer-update:{c.id}:{c.modified_at.isoformat()}"
    )
    return c.provider_customer_id


async def sync_plan(ctx: AppContext, provider: PaymentProvider, env: str, plan_id: str) -> PlanData:
    """The plan with every provider id it needs (product, base price, meters and
    metered prices), creating what is missing."""
    async with ctx.db.reader() as s:
        plan = await required(s, Plan, plan_id)
        pd = await plan_data(s, plan)
        cached: dict[str, str | None] = {
            fid: pid
            for fid, pid in (
                await s.execute(
                    select(PlanFeature.feature_id, PlanFeature.provider_price_id).where(
                        PlanFeature.plan_id == plan.id
                    )
                )
            ).all()
        }
    if _complete(pd):
        return pd
    try:
        ref = await provider.sync_plan(pd, idempotency_key=f"plan:{plan.id}")
    except ProviderError as exc:
        raise stripe_error(exc) from None
    if ref is None:
        return pd
    metered = dict(ref.data.get("metered") or {})
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(Plan)
            .where(Plan.id == plan.id, Plan.provider_product_id.is_(None))
            .values(provider_product_id=ref.external_id)
            .execution_options(synchronize_session=False)
        )
        if pd.external_price_id is None and ref.data.get("price_id"):
            # conditional on the cached price this sync replaced: a concurrent sync of
            # the same terms got the same price (same idempotency key) and wrote it once
            await s.execute(
                update(Plan)
                .where(Plan.id == plan.id, _same(Plan.provider_price_id, plan.provider_price_id))
                .values(
                    provider_price_id=ref.data["price_id"], provider_price_version=pd.price_version
                )
                .execution_options(synchronize_session=False)
            )
        if ref.data.get("base_meter_id") and not pd.external_base_meter_id:
            environment = await s.get(Environment, env, with_for_update=True)
            if environment is not None and not (environment.settings or {}).get(BASE_METER_SETTING):
                environment.settings = {
                    **(environment.settings or {}),
                    BASE_METER_SETTING: ref.data["base_meter_id"],
                }
        for m in pd.metered:
            ids = metered.get(m.feature_key) or {}
            if ids.get("meter_id"):
                await s.execute(
                    update(Feature)
                    .where(Feature.id == m.feature_id, Feature.provider_meter_id.is_(None))
                    .values(provider_meter_id=ids["meter_id"])
                    .execution_options(synchronize_session=False)
                )
            if ids.get("price_id") and m.external_price_id is None:
                await s.execute(
                    update(PlanFeature)
                    .where(
                        PlanFeature.plan_id == plan.id,
                        PlanFeature.feature_id == m.feature_id,
                        _same(PlanFeature.provider_price_id, cached.get(m.feature_id)),
                    )
                    .values(
                        provider_price_id=ids["price_id"], provider_price_version=m.price_version
                    )
                    .execution_options(synchronize_session=False)
                )
    async with ctx.db.reader() as s:
        return await plan_data(s, await required(s, Plan, plan_id))


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


async def plan_for_price(
    s: AsyncSession, env: str, price_ids: str | Sequence[str] | None
) -> Plan | None:
    """The plan whose current base price is among ``price_ids`` (a subscription's
    prices: the base one may be licensed or, billed in arrears, metered)."""
    ids = [price_ids] if isinstance(price_ids, str) else list(price_ids or ())
    if not ids:
        return None
    return await s.scalar(
        select(Plan)
        .where(Plan.environment_id == env, Plan.provider_price_id.in_(ids))
        .order_by(Plan.id)
        .limit(1)
    )


async def after_customer_write(ctx: AppContext, env: str, customer_id: str) -> str | None:
    """Called by the customer create/update use cases after their commit: the Stripe
    customer id when Stripe collects payments and the sync worked, else None (a failed
    sync is logged; the customer's first subscription syncs it again)."""
    try:
        return await push_customer(ctx, env, customer_id)
    except (ProviderError, StripeApiError) as exc:
        log.warning("customer %s not synced to Stripe yet: %s", customer_id, exc)
        return None

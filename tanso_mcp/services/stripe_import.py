"""Discovering and importing what a Stripe account already holds.

``discover`` lists the account's products (with their prices), customers and
subscriptions, each flagged ``alreadyMapped`` when a record here is linked to it.

``start_import`` records a job and answers at once; the job then runs in the
background: it reads the account (no transaction open), then imports item by item,
each in its own unit of work, in dependency order — products (→ plans, their base
price, metered prices → features with usage pricing), customers, subscriptions (mirrored
exactly as a subscription confirmed by Stripe: entitlements and plan credits). Every
item is found by its Stripe id first and the links are unique per environment, so
re-running never duplicates; a failing item is recorded in ``errorDetails`` and never
stops the others. A job left running by a process that died is resumed by the job
runner's pass ``stripe.import``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import after_commit, rowcount
from ..db.models import Customer, Environment, Feature, Plan, PlanFeature, Subscription
from ..db.stripe_usage_models import StripeImportJob
from ..db.types import new_id
from ..domain.money import from_minor
from ..errors import NotFound, PreconditionFailed, TansoError
from ..plugin import (
    ExternalCustomer,
    ExternalPrice,
    ExternalProduct,
    ExternalSubscription,
    InvoicingProvider,
    ProviderError,
)
from ..principal import Principal
from . import billing, catalog, customers, payments, stripe_mirror, stripe_secrets
from .outputs_stripe import ImportJobOut, StripeDiscoveryOut
from .stripe_setup import invoicing, stripe_error
from .stripe_sync import base_price_version, metered_price_version

if TYPE_CHECKING:
    from ..bootstrap import AppContext
    from .jobs import JobRegistry

log = logging.getLogger("tanso_mcp.stripe_import")

PROVIDER = "stripe"
SOURCE = "STRIPE_IMPORT"
STALE_AFTER = timedelta(minutes=2)  # a running job not heard of for this long is resumed
MAX_ERRORS_KEPT = 200
LIVE = ("active", "trialing")
PASS = "stripe.import"


# --------------------------------------------------------------------------- the account


async def _provider(ctx: AppContext, env_id: str) -> InvoicingProvider:
    async with ctx.db.reader() as s:
        return invoicing(await payments.provider_for(ctx, s, env_id, name=PROVIDER))


async def _stripe_mode(ctx: AppContext, env_id: str) -> str | None:
    async with ctx.db.reader() as s:
        return await s.scalar(select(Environment.stripe_mode).where(Environment.id == env_id))


def mode_warnings(stripe_mode: str | None) -> list[str]:
    if stripe_mode == "STRIPE_DRIVEN":
        return []
    return [
        f"the environment's Stripe mode is {stripe_mode or 'NONE'}, not STRIPE_DRIVEN: "
        "imported records are linked to Stripe, but Stripe does not drive billing here "
        "until setupStripeIntegration has run"
    ]


async def _read_account(
    provider: InvoicingProvider,
) -> tuple[list[ExternalProduct], list[ExternalCustomer], list[ExternalSubscription]]:
    try:
        return (
            await provider.list_products(),
            await provider.list_customers(),
            await provider.list_subscriptions(),
        )
    except ProviderError as exc:
        if exc.code == "no_key":
            raise PreconditionFailed(
                "no Stripe secret key is registered: call registerStripeApiKey first"
            ) from None
        raise stripe_error(exc) from None


async def _mapped(ctx: AppContext, env_id: str) -> dict[str, dict[str, str]]:
    """Stripe id -> id here, per kind."""
    async with ctx.db.reader() as s:
        plans = (
            await s.execute(
                select(Plan.provider_product_id, Plan.id).where(
                    Plan.environment_id == env_id, Plan.provider_product_id.is_not(None)
                )
            )
        ).all()
        custs = (
            await s.execute(
                select(Customer.provider_customer_id, Customer.reference_id).where(
                    Customer.environment_id == env_id, Customer.provider_customer_id.is_not(None)
                )
            )
        ).all()
        subs = (
            await s.execute(
                select(Subscription.provider_subscription_id, Subscription.id).where(
                    Subscription.environment_id == env_id,
                    Subscription.provider_subscription_id.is_not(None),
                )
            )
        ).all()

    def ids(rows: Any) -> dict[str, str]:
        return {str(ext): str(own) for ext, own in rows}

    return {"product": ids(plans), "customer": ids(custs), "subscription": ids(subs)}


def _price_out(p: ExternalPrice) -> dict[str, Any]:
    return {
        "id": p.external_id,
        "currency": p.currency.upper(),
        "unitAmount": p.unit_amount
        if p.unit_amount is not None
        else (
            from_minor(p.unit_amount_minor, p.currency) if p.unit_amount_minor is not None else None
        ),
        "interval": p.interval,
        "intervalCount": p.interval_count,
        "usageType": p.usage_type,
        "meterId": p.meter_id,
        "tiered": bool(p.tiers),
        "active": p.active,
    }


async def discover(ctx: AppContext, p: Principal) -> StripeDiscoveryOut:
    env = p.environment_id
    products, custs, subs = await _read_account(await _provider(ctx, env))
    mapped = await _mapped(ctx, env)
    found = {
        "products": [
            {
                "id": x.external_id,
                "name": x.name,
                "active": x.active,
                "prices": [_price_out(pr) for pr in x.prices],
                "alreadyMapped": x.external_id in mapped["product"],
                "planId": mapped["product"].get(x.external_id),
            }
            for x in products
        ],
        "customers": [
            {
                "id": c.external_id,
                "email": c.email,
                "name": c.name,
                "alreadyMapped": c.external_id in mapped["customer"],
                "customerReferenceId": mapped["customer"].get(c.external_id),
            }
            for c in custs
        ],
        "subscriptions": [
            {
                "id": x.external_id,
                "customer": x.customer_external_id,
                "status": x.status,
                "priceIds": list(x.price_ids),
                "alreadyMapped": x.external_id in mapped["subscription"],
                "subscriptionId": mapped["subscription"].get(x.external_id),
            }
            for x in subs
        ],
        "warnings": mode_warnings(await _stripe_mode(ctx, env)),
    }
    return StripeDiscoveryOut.model_validate(found)


# --------------------------------------------------------------------------- items


_SLUG = re.compile(r"[^A-Za-z0-9._:\-]+")


def plan_key_for(product: ExternalProduct) -> str:
    """A plan key from the product (``metadata.planKey`` when given)."""
    raw = product.metadata.get("planKey") or product.name or product.external_id
    key = _SLUG.sub("_", raw.strip().lower()).strip("_-.:")[:100]
    return key or product.external_id


def _interval_months(price: ExternalPrice) -> int:
    if price.interval == "month":
        return price.interval_count
    if price.interval == "year":
        return 12 * price.interval_count
    raise TansoError(f"price {price.external_id}: a {price.interval} interval is not supported")


def _unit_amount(price: ExternalPrice) -> Decimal:
    if price.unit_amount is not None:
        return price.unit_amount
    if price.unit_amount_minor is not None:
        return from_minor(price.unit_amount_minor, price.currency)
    return Decimal(0)


def _usage_rule(price: ExternalPrice, unit_label: str) -> dict[str, Any]:
    if price.tiers:
        tiers = []
        for t in price.tiers:
            tier: dict[str, Any] = {
                "up_to": "inf" if t.up_to is None else str(t.up_to),
                "price_per_unit": str(t.unit_price),
            }
            if t.flat_fee:
                tier["flat_fee"] = str(t.flat_fee)
            tiers.append(tier)
        return {"pricing": {"model": "graduated", "usage_unit_type": unit_label, "tiers": tiers}}
    return {
        "pricing": {
            "model": "usage",
            "usage_unit_type": unit_label,
            "price_per_unit": str(_unit_amount(price)),
        }
    }


async def _free_key(s: AsyncSession, model: Any, env: str, key: str, suffix: str | None) -> str:
    taken = await s.scalar(select(model.id).where(model.environment_id == env, model.key == key))
    return key if taken is None else f"{key[:100]}_{(suffix or new_id())[-8:]}"


async def import_product(ctx: AppContext, env: str, product: ExternalProduct, now: datetime) -> str:
    """Plan (and metered features) for one product; answers ``created``/``exists``."""
    async with ctx.db.unit_of_work() as s:
        found = await s.scalar(
            select(Plan.id).where(
                Plan.environment_id == env, Plan.provider_product_id == product.external_id
            )
        )
        if found is not None:
            return "exists"
        prices = [p for p in product.prices if p.active and p.interval is not None]
        base = next((p for p in prices if p.usage_type != "metered"), None)
        metered = [p for p in prices if p.usage_type == "metered" and p.meter_id]
        if base is None and not metered:
            raise TansoError(f"product {product.external_id} has no active recurring price")
        ref_price = base or metered[0]
        key = await _free_key(s, Plan, env, plan_key_for(product), product.external_id)
        amount = _unit_amount(base) if base is not None else Decimal(0)
        plan = await catalog.create_plan(
            s,
            env,
            now,
            key=key,
            name=(product.name or key)[:200],
            # an ACTIVE plan needs a description
            description=product.description
            or f"Imported from Stripe product {product.external_id}",
            price_amount=str(amount),
            interval_months=_interval_months(ref_price),
            billing_timing="IN_ADVANCE" if amount > 0 else "IN_ARREARS",
            currency=ref_price.currency.upper(),
        )
        await s.execute(
            update(Plan)
            .where(Plan.id == plan.id)
            .values(
                provider_product_id=product.external_id,
                provider_price_id=base.external_id if base is not None else None,
                # the plan was made from this price: its terms are the price's
                provider_price_version=base_price_version(plan) if base is not None else None,
            )
            .execution_options(synchronize_session=False)
        )
        for n, price in enumerate(metered, start=1):
            fkey = await _free_key(
                s, Feature, env, f"{key}_usage" if n == 1 else f"{key}_usage_{n}", price.meter_id
            )
            feature = await s.scalar(
                select(Feature).where(
                    Feature.environment_id == env, Feature.provider_meter_id == price.meter_id
                )
            ) or await catalog.create_feature(
                s, env, now, key=fkey, name=f"{product.name or key} usage", source=SOURCE
            )
            await s.execute(
                update(Feature)
                .where(Feature.id == feature.id)
                .values(provider_meter_id=price.meter_id)
                .execution_options(synchronize_session=False)
            )
            rule = await catalog.link_feature(
                s,
                env,
                now,
                plan_id=plan.id,
                feature_id=feature.id,
                value_json=_usage_rule(price, "units"),
            )
            rv = catalog.rule_value(rule)
            await s.execute(
                update(PlanFeature)
                .where(PlanFeature.id == rule.id)
                .values(
                    provider_price_id=price.external_id,
                    provider_price_version=metered_price_version(plan, rv.pricing)
                    if rv is not None and rv.pricing is not None
                    else None,
                )
                .execution_options(synchronize_session=False)
            )
        if not metered:
            # an ACTIVE plan grants at least one feature: access to the product itself
            fkey = await _free_key(s, Feature, env, f"{key}_access", product.external_id)
            feature = await catalog.create_feature(
                s, env, now, key=fkey, name=f"{product.name or key} access", source=SOURCE
            )
            await catalog.link_feature(s, env, now, plan_id=plan.id, feature_id=feature.id)
        if product.active:
            await catalog.update_plan(s, env, now, plan.id, status="ACTIVE")
        after_commit(s, _invalidate(ctx, env))
    return "created"


def _invalidate(ctx: AppContext, env: str):
    async def done() -> None:
        ctx.invalidate(env)

    return done


def _split_name(name: str | None) -> tuple[str | None, str | None]:
    if not name or not name.strip():
        return None, None
    first, _, last = name.strip().partition(" ")
    return first[:200], (last.strip() or None) and last.strip()[:200]


async def import_customer(ctx: AppContext, env: str, cust: ExternalCustomer, now: datetime) -> str:
    async with ctx.db.unit_of_work() as s:
        found = await s.scalar(
            select(Customer.id).where(
                Customer.environment_id == env,
                Customer.provider_customer_id == cust.external_id,
            )
        )
        if found is not None:
            return "exists"
        ref = cust.metadata.get("customerReferenceId") or cust.external_id
        existing = await customers.find_by_reference(s, env, ref)
        if existing is not None:
            if existing.provider_customer_id not in (None, cust.external_id):
                raise TansoError(
                    f"customer {ref!r} is already linked to Stripe customer "
                    f"{existing.provider_customer_id}"
                )
            await s.execute(
                update(Customer)
                .where(Customer.id == existing.id)
                .values(provider_customer_id=cust.external_id, modified_at=now)
                .execution_options(synchronize_session=False)
            )
            return "linked"
        first, last = _split_name(cust.name)
        created = await customers.create_customer(
            s,
            env,
            now,
            reference_id=ref,
            email=cust.email,
            first_name=first,
            last_name=last,
            source=SOURCE,
        )
        await s.execute(
            update(Customer)
            .where(Customer.id == created.id)
            .values(provider_customer_id=cust.external_id)
            .execution_options(synchronize_session=False)
        )
    return "created"


async def import_subscription(
    ctx: AppContext, env: str, ext: ExternalSubscription, now: datetime
) -> str:
    if ext.status not in LIVE:
        return "skipped"  # ended or never paid: nothing to mirror
    async with ctx.db.unit_of_work() as s:
        if await stripe_mirror.subscription_by_external(s, env, ext.external_id) is not None:
            return "exists"
        fx = billing.Effects(action="import")
        sub = await stripe_mirror.materialise(s, env, ext, now, fx)
        if sub is None:
            raise TansoError(
                f"subscription {ext.external_id}: its customer or plan is not here (import "
                "the customer and the product of its price first)"
            )
        principal = await _system_principal(s, env)

        async def announce() -> None:
            ctx.invalidate(env)
            for name, payload in fx.events:
                await ctx.emit(name, principal, payload)

        after_commit(s, announce)
    return "created"


async def _system_principal(s, env: str) -> Principal:
    from .billing_jobs import system_principal

    return await system_principal(s, env)


# --------------------------------------------------------------------------- the job


def job_out(job: StripeImportJob, **extra: Any) -> ImportJobOut:
    return ImportJobOut.model_validate(
        {
            "jobId": job.id,
            "status": job.status,
            "totalItems": job.total_items,
            "processedItems": job.processed_items,
            "failedItems": job.failed_items,
            "errorDetails": list(job.error_details or []),
            "warnings": list(job.warnings or []),
            "createdAt": job.created_at,
            "startedAt": job.started_at,
            "finishedAt": job.finished_at,
            **extra,
        }
    )


async def _progress(ctx: AppContext, job_id: str, *, error: dict[str, Any] | None = None) -> None:
    wall = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        job = await s.get(StripeImportJob, job_id, with_for_update=ctx.db.dialect == "postgresql")
        if job is None:
            return
        job.processed_items += 1
        if error is not None:
            job.failed_items += 1
            if len(job.error_details or []) < MAX_ERRORS_KEPT:
                job.error_details = [*(job.error_details or []), error]
        job.modified_at = wall


async def run_job(ctx: AppContext, env: str, job_id: str) -> None:
    """The import itself (background). Safe to run again: every item is idempotent."""
    wall = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(StripeImportJob)
            .where(StripeImportJob.id == job_id)
            .values(
                status="RUNNING",
                started_at=wall,
                modified_at=wall,
                processed_items=0,
                failed_items=0,
                error_details=[],
            )
        )
    try:
        products, custs, subs = await _read_account(await _provider(ctx, env))
    except TansoError as exc:
        await _finish(ctx, job_id, "FAILED", {"item": "account", "message": exc.message})
        return
    items: list[tuple[str, str, Any]] = (
        [("product", p.external_id, p) for p in products]
        + [("customer", c.external_id, c) for c in custs]
        + [("subscription", x.external_id, x) for x in subs]
    )
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(StripeImportJob)
            .where(StripeImportJob.id == job_id)
            .values(total_items=len(items), modified_at=ctx.clocks.system_now())
        )
    steps: dict[str, Callable[[AppContext, str, Any, datetime], Awaitable[str]]] = {
        "product": import_product,
        "customer": import_customer,
        "subscription": import_subscription,
    }
    for kind, ext_id, obj in items:
        now = await ctx.clocks.now(env)
        error = None
        try:
            await steps[kind](ctx, env, obj, now)
        except asyncio.CancelledError:
            raise
        except IntegrityError:
            # imported by a concurrent run between our lookup and insert: done already
            pass
        except TansoError as exc:
            error = {"item": kind, "id": ext_id, "message": exc.message}
        except Exception as exc:  # one bad item never stops the others
            log.exception("import of %s %s failed", kind, ext_id)
            error = {"item": kind, "id": ext_id, "message": f"{type(exc).__name__}: {exc}"}
        await _progress(ctx, job_id, error=error)
    await _finish(ctx, job_id, None, None)


async def _finish(
    ctx: AppContext, job_id: str, status: str | None, error: dict[str, Any] | None
) -> None:
    wall = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        job = await s.get(StripeImportJob, job_id)
        if job is None:
            return
        if error is not None:
            job.error_details = [*(job.error_details or []), error]
        job.status = status or ("COMPLETED_WITH_ERRORS" if job.failed_items else "COMPLETED")
        job.finished_at = wall
        job.modified_at = wall


def _spawn(ctx: AppContext, env: str, job_id: str) -> None:
    tasks: set[asyncio.Task] = ctx.extras.setdefault("stripe_import_tasks", set())
    if not tasks:

        async def close() -> None:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        ctx.on_close(close)

    async def guarded() -> None:
        try:
            await run_job(ctx, env, job_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the job pass resumes it; never an unhandled task error
            log.exception("stripe import %s failed", job_id)

    task = asyncio.get_running_loop().create_task(guarded())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def start_import(ctx: AppContext, p: Principal) -> ImportJobOut:
    """Record the job and start it in the background; answers the job at once."""
    env = p.environment_id
    async with ctx.db.reader() as s:
        if stripe_secrets.API_KEY not in await stripe_secrets.rows(s, env):
            raise PreconditionFailed(
                "no Stripe secret key is registered: call registerStripeApiKey first"
            )
    warnings = mode_warnings(await _stripe_mode(ctx, env))
    wall = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        job = StripeImportJob(
            environment_id=env,
            status="PENDING",
            error_details=[],
            warnings=warnings,
            created_at=wall,
            modified_at=wall,
        )
        s.add(job)
        await s.flush()
        out = job_out(job, success=True)
    _spawn(ctx, env, out.jobId)
    return out


async def import_preview(ctx: AppContext, p: Principal) -> dict[str, Any]:
    """What confirming would do (no call to Stripe)."""
    mapped = await _mapped(ctx, p.environment_id)
    return {
        "dryRun": True,
        "effects": [
            "read the Stripe account's products, customers and subscriptions",
            "create a plan per product not linked yet (base price; metered prices become "
            "features with usage pricing), a customer per Stripe customer not linked yet, "
            "and mirror each active subscription with its entitlements and plan credits",
        ],
        "alreadyLinked": {k: len(v) for k, v in mapped.items()},
        "warnings": mode_warnings(await _stripe_mode(ctx, p.environment_id)),
    }


async def import_status(ctx: AppContext, p: Principal, job_id: str) -> ImportJobOut:
    async with ctx.db.reader() as s:
        job = await s.scalar(
            select(StripeImportJob).where(
                StripeImportJob.id == job_id, StripeImportJob.environment_id == p.environment_id
            )
        )
    if job is None:
        raise NotFound(f"import job {job_id!r} not found", field="jobId")
    return job_out(job)


def register(registry: JobRegistry) -> None:
    async def resume(ctx: AppContext, env_id: str, now: datetime) -> int:
        """Restart jobs whose process went away (claimed with a conditional update)."""
        wall = ctx.clocks.system_now()
        async with ctx.db.reader() as s:
            stale = list(
                (
                    await s.execute(
                        select(StripeImportJob.id).where(
                            StripeImportJob.environment_id == env_id,
                            StripeImportJob.status.in_(("PENDING", "RUNNING")),
                            StripeImportJob.modified_at < wall - STALE_AFTER,
                        )
                    )
                ).scalars()
            )
        resumed = 0
        for job_id in stale:
            async with ctx.db.unit_of_work() as s:
                res = await s.execute(
                    update(StripeImportJob)
                    .where(
                        StripeImportJob.id == job_id,
                        StripeImportJob.modified_at < wall - STALE_AFTER,
                    )
                    .values(modified_at=wall)
                )
            if rowcount(res) == 1:
                await run_job(ctx, env_id, job_id)
                resumed += 1
        return resumed

    registry.register_pass(PASS, resume)

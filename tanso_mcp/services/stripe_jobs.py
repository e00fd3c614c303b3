"""Stripe Integration mode's background work, run by the job runner after each
environment's due items (and on every test-clock advance), outside any transaction:

* ``stripe.webhooks`` — webhook events whose processing failed (Stripe unreachable…)
  are processed again, with backoff, until they succeed;
* ``stripe.plan_changes`` — a plan change scheduled for the period end (downgrade) is
  applied at the boundary: to Stripe's metered prices (its base price was put in place
  when the change was scheduled, see ``stripe_items``) and then to the engine;
* ``stripe.prices`` — subscriptions are moved to their plan's current prices (a
  catalog edit creates new Stripe prices): base prices before the next renewal,
  metered ones once a new period has begun.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import and_, select

from ..db.models import Environment, ScheduledChange, Subscription
from ..errors import StripeApiError
from ..plugin.api import (
    PROVIDER_INVOICING,
    ExternalSubscription,
    InvoicingProvider,
    PlanData,
    ProviderError,
)
from . import billing, payments, stripe_items, stripe_sync, stripe_webhooks
from .billing_jobs import system_principal
from .jobs import JobRegistry
from .stripe_mirror import converge_subscription

if TYPE_CHECKING:
    from ..bootstrap import AppContext


async def _stripe_env(ctx: AppContext, env_id: str) -> bool:
    async with ctx.db.reader() as s:
        provider_name = await s.scalar(
            select(Environment.payment_provider).where(Environment.id == env_id)
        )
        if provider_name != "stripe":
            return False
        provider = await payments.provider_for(ctx, s, env_id)
    return PROVIDER_INVOICING in provider.capabilities


async def webhooks_pass(ctx: AppContext, env_id: str, now: datetime) -> int:
    return await stripe_webhooks.retry_due(ctx, env_id)


async def plan_changes_pass(ctx: AppContext, env_id: str, now: datetime) -> int:
    if not await _stripe_env(ctx, env_id):
        return 0
    async with ctx.db.reader() as s:
        due = (
            await s.execute(
                select(ScheduledChange, Subscription)
                .join(Subscription, Subscription.id == ScheduledChange.subscription_id)
                .where(
                    ScheduledChange.environment_id == env_id,
                    ScheduledChange.status == "PENDING",
                    ScheduledChange.effective_at <= now,
                    Subscription.provider_subscription_id.is_not(None),
                    Subscription.ended_at.is_(None),
                )
                .limit(100)
            )
        ).all()
        provider = await stripe_sync.provider_invoicing(ctx, s, env_id)
    if provider is None:
        return 0
    done = 0
    for change, sub in due:
        if await _apply_change(ctx, provider, env_id, change, sub, now):
            done += 1
    return done


async def _apply_change(
    ctx: AppContext,
    provider: InvoicingProvider,
    env_id: str,
    change: ScheduledChange,
    sub: Subscription,
    now: datetime,
) -> bool:
    from .stripe_billing import _subscription_data
    from .stripe_sync import sync_plan

    try:
        target = await sync_plan(ctx, provider, env_id, change.to_plan_id)
        async with ctx.db.reader() as s:
            sdata = await _subscription_data(s, env_id, sub)
        ext = await provider.change_plan(
            sdata, target, prorate=False, idempotency_key=f"scheduled-change:{change.id}"
        )
    except (ProviderError, StripeApiError):
        return False  # Stripe unreachable or refusing: tried again on the next pass
    async with ctx.db.unit_of_work() as s:
        fresh = await s.get(ScheduledChange, change.id, populate_existing=True)
        if fresh is None or fresh.status != "PENDING":
            return False
        fx = billing.Effects(action="SCHEDULED_CHANGE", subscription_id=sub.id)
        fresh.status = "COMPLETED"
        fresh.fulfilled_at = now
        current = await billing.load_subscription(s, env_id, sub.id)
        await stripe_items.record(
            s, sub.id, stripe_items.full(target, current.current_period_start), bump=False
        )
        if isinstance(ext, ExternalSubscription):
            current = await billing.load_subscription(s, env_id, sub.id)
            await converge_subscription(s, env_id, current, ext, now, fx)
        principal = await system_principal(s, env_id)
    ctx.invalidate(env_id)
    for name, payload in fx.events:
        await ctx.emit(name, principal, payload)
    return True


async def prices_pass(ctx: AppContext, env_id: str, now: datetime) -> int:
    """Every live Stripe subscription billing what it should (``stripe_items``): the
    plans' prices synced first (a changed price gets a new Stripe price), then each
    subscription whose recorded items differ is updated. A Stripe failure leaves the
    rest for the next pass."""
    if not await _stripe_env(ctx, env_id):
        return 0
    async with ctx.db.reader() as s:
        provider = await stripe_sync.provider_invoicing(ctx, s, env_id)
        rows = (
            await s.execute(
                select(Subscription, ScheduledChange.to_plan_id)
                .outerjoin(
                    ScheduledChange,
                    and_(
                        ScheduledChange.subscription_id == Subscription.id,
                        ScheduledChange.status == "PENDING",
                    ),
                )
                .where(
                    Subscription.environment_id == env_id,
                    Subscription.provider_subscription_id.is_not(None),
                    Subscription.ended_at.is_(None),
                )
            )
        ).all()
    if provider is None or not rows:
        return 0
    plans: dict[str, PlanData | None] = {}

    async def synced(plan_id: str) -> PlanData | None:
        if plan_id not in plans:
            try:
                plans[plan_id] = await stripe_sync.sync_plan(ctx, provider, env_id, plan_id)
            except (ProviderError, StripeApiError):
                plans[plan_id] = None
        return plans[plan_id]

    done = 0
    for sub, to_plan_id in rows:
        current = await synced(sub.plan_id)
        target = await synced(to_plan_id) if to_plan_id else None
        if current is None or (to_plan_id and target is None):
            continue
        try:
            doc = await stripe_items.align(ctx, provider, env_id, sub, current, target)
        except ProviderError:
            continue
        if doc is None:
            continue
        async with ctx.db.unit_of_work() as s:
            await stripe_items.record(s, sub.id, doc, bump=True)
        done += 1
    return done


def register(registry: JobRegistry) -> None:
    registry.register_pass("stripe.webhooks", webhooks_pass)
    registry.register_pass("stripe.plan_changes", plan_changes_pass)
    registry.register_pass("stripe.prices", prices_pass)

"""Stripe Integration mode's background work, run by the job runner after each
environment's due items (and on every test-clock advance), outside any transaction:

* ``stripe.webhooks`` — webhook events whose processing failed (Stripe unreachable…)
  are processed again, with backoff, until they succeed;
* ``stripe.plan_changes`` — a plan change scheduled for the period end (downgrade) is
  applied to Stripe at the boundary (no proration: the new price bills from the next
  period) and then to the engine.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from ..db.models import Environment, ScheduledChange, Subscription
from ..plugin.api import PROVIDER_INVOICING, ExternalSubscription, ProviderError
from . import billing, payments, stripe_webhooks
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
        provider = await payments.provider_for(ctx, s, env_id)
    done = 0
    for change, sub in due:
        if await _apply_change(ctx, provider, env_id, change, sub, now):
            done += 1
    return done


async def _apply_change(ctx, provider, env_id, change, sub, now) -> bool:
    from .stripe_billing import _subscription_data
    from .stripe_sync import sync_plan

    target = await sync_plan(ctx, provider, env_id, change.to_plan_id)
    async with ctx.db.reader() as s:
        sdata = await _subscription_data(s, env_id, sub)
    try:
        ext = await provider.change_plan(
            sdata, target, prorate=False, idempotency_key=f"scheduled-change:{change.id}"
        )
    except ProviderError:
        return False  # Stripe unreachable or refusing: tried again on the next pass
    async with ctx.db.unit_of_work() as s:
        fresh = await s.get(ScheduledChange, change.id, populate_existing=True)
        if fresh is None or fresh.status != "PENDING":
            return False
        fx = billing.Effects(action="SCHEDULED_CHANGE", subscription_id=sub.id)
        fresh.status = "COMPLETED"
        fresh.fulfilled_at = now
        if isinstance(ext, ExternalSubscription):
            current = await billing.load_subscription(s, env_id, sub.id)
            await converge_subscription(s, env_id, current, ext, now, fx)
        principal = await system_principal(s, env_id)
    ctx.invalidate(env_id)
    for name, payload in fx.events:
        await ctx.emit(name, principal, payload)
    return True


def register(registry: JobRegistry) -> None:
    registry.register_pass("stripe.webhooks", webhooks_pass)
    registry.register_pass("stripe.plan_changes", plan_changes_pass)

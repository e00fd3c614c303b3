"""Subscription read side: the derived status and the subscription presenter. The
lifecycle (subscribe, pay, plan change, cancel, renew) is in ``services/billing.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Customer, Invoice, Plan, ScheduledChange, Subscription
from .views import plan_view


def derive_status(sub: Subscription, has_past_due: bool) -> str:
    """pending_payment | active | cancel_scheduled | past_due | cancelled."""
    if sub.ended_at is not None or (not sub.is_active and sub.cancelled_at is not None):
        return "cancelled"
    if not sub.is_active:
        return "pending_payment"
    if has_past_due:
        return "past_due"
    if sub.cancel_mode == "END_OF_PERIOD" and sub.cancel_effective_at is not None:
        return "cancel_scheduled"
    return "active"


def subscription_view(
    sub: Subscription,
    plan: Plan,
    customer: Customer,
    *,
    has_past_due: bool,
    scheduled: ScheduledChange | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sub.id,
        "status": derive_status(sub, has_past_due),
        "isActive": sub.is_active,
        "customerReferenceId": customer.reference_id,
        "planId": plan.id,
        "plan": plan_view(plan),
        "intervalMonths": sub.interval_months,
        "gracePeriodDays": sub.grace_period_days,
        "billingAnchorDay": sub.billing_anchor_day,
        "currentPeriodStart": sub.current_period_start,
        "currentPeriodEnd": sub.current_period_end,
        "cancelMode": sub.cancel_mode,
        "cancelEffectiveAt": sub.cancel_effective_at,
        "cancelledAt": sub.cancelled_at,
        "createdAt": sub.created_at,
        "metadata": sub.metadata_ or None,
    }
    if scheduled is not None:
        out["scheduledChange"] = {
            "id": scheduled.id,
            "type": scheduled.type,
            "status": scheduled.status,
            "fromPlanId": scheduled.from_plan_id,
            "toPlanId": scheduled.to_plan_id,
            "effectiveAt": scheduled.effective_at,
            "createdAt": scheduled.created_at,
        }
    return out


async def subscriptions_for_customer_view(s: AsyncSession, c: Customer) -> list[dict[str, Any]]:
    rows = (
        await s.execute(
            select(Subscription, Plan)
            .join(Plan, Plan.id == Subscription.plan_id)
            .where(Subscription.customer_id == c.id)
            .order_by(Subscription.created_at)
        )
    ).all()
    if not rows:
        return []
    ids = [sub.id for sub, _ in rows]
    past_due = set(
        (
            await s.execute(
                select(Invoice.subscription_id).where(
                    Invoice.subscription_id.in_(ids), Invoice.status == "PAST_DUE"
                )
            )
        ).scalars()
    )
    pending = {
        sc.subscription_id: sc
        for sc in (
            await s.execute(
                select(ScheduledChange).where(
                    ScheduledChange.subscription_id.in_(ids), ScheduledChange.status == "PENDING"
                )
            )
        ).scalars()
    }
    return [
        subscription_view(
            sub, plan, c, has_past_due=sub.id in past_due, scheduled=pending.get(sub.id)
        )
        for sub, plan in rows
    ]

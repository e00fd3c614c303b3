"""Subscription read side: the derived status and the subscription presenter. The
lifecycle (subscribe, pay, plan change, cancel, renew) is in ``services/billing.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.guards import among
from ..db.models import Customer, Invoice, Plan, ScheduledChange, Subscription
from ..domain.entitlements import PAST_DUE_INVOICE_STATUS, is_past_due, subscription_status
from .views import plan_view


def derive_status(sub: Subscription, has_past_due: bool) -> str:
    """pending_payment | active | cancel_scheduled | past_due | cancelled (the rule is
    :func:`tanso_mcp.domain.entitlements.subscription_status`)."""
    return subscription_status(
        is_active=sub.is_active,
        ended_at=sub.ended_at,
        cancelled_at=sub.cancelled_at,
        cancel_mode=sub.cancel_mode,
        cancel_effective_at=sub.cancel_effective_at,
        past_due=has_past_due,
    )


async def past_due_ids(s: AsyncSession, sub_ids: list[str]) -> set[str]:
    """The subscriptions of ``sub_ids`` that are past due, by the domain rule applied to
    their invoices' statuses."""
    if not sub_ids:
        return set()
    statuses: dict[str, set[str]] = {}
    for sid, status in (
        await s.execute(
            select(Invoice.subscription_id, Invoice.status)
            .where(among(s, Invoice.subscription_id, sub_ids))
            .distinct()
        )
    ).all():
        if sid is not None:
            statuses.setdefault(sid, set()).add(status)
    return {sid for sid, st in statuses.items() if is_past_due(st)}


def past_due_clause(subscription_id: Any) -> Any:
    """The same rule as a SQL condition on a subscription id column, for queries that
    must filter in the database (the job finder)."""
    return exists().where(
        Invoice.subscription_id == subscription_id, Invoice.status == PAST_DUE_INVOICE_STATUS
    )


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
    past_due = await past_due_ids(s, ids)
    pending = {
        sc.subscription_id: sc
        for sc in (
            await s.execute(
                select(ScheduledChange).where(
                    among(s, ScheduledChange.subscription_id, ids),
                    ScheduledChange.status == "PENDING",
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

"""Converge the engine to the payment provider's state (Stripe Integration mode).

Stripe is the system of record for subscriptions and invoices; these functions apply
what Stripe says *now* (objects read back from Stripe, never only the event that
mentioned them), inside the caller's unit of work, with no network call. Applying the
same state twice changes nothing, and no order of callbacks can move the engine
backwards: an ended subscription is never reactivated, a paid invoice never becomes
unpaid again.

Every rule is the billing service's own: entitlements are reconciled, plan credits
granted (once per subscription, denomination and period), rolled over and clawed back
by the functions native billing uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import rowcount
from ..db.models import (
    Customer,
    Invoice,
    InvoiceItem,
    PendingSubscription,
    Plan,
    ScheduledChange,
    Subscription,
)
from ..db.types import new_id
from ..domain.money import from_minor
from ..domain.periods import add_months, start_of_day
from ..plugin.api import ExternalInvoice, ExternalSubscription
from . import billing, credits, stripe_items
from . import invoices as inv_svc
from .credits import insert_ignore
from .stripe_setup import required
from .stripe_sync import plan_data, plan_for_price

PAID_STATES = ("active", "trialing")
ENDED_STATES = ("canceled", "incomplete_expired")


async def subscription_by_external(s: AsyncSession, env: str, ext_id: str) -> Subscription | None:
    return await s.scalar(
        select(Subscription)
        .where(Subscription.environment_id == env, Subscription.provider_subscription_id == ext_id)
        .execution_options(populate_existing=True)
    )


async def _pending_for(
    s: AsyncSession, env: str, ext: ExternalSubscription, checkout_id: str | None
) -> PendingSubscription | None:
    pid = ext.metadata.get("tansoPendingId")
    q = select(PendingSubscription).where(PendingSubscription.environment_id == env)
    if pid:
        return await s.scalar(q.where(PendingSubscription.id == pid))
    for ref in (checkout_id, ext.external_id):
        if ref:
            row = await s.scalar(q.where(PendingSubscription.external_id == ref))
            if row is not None:
                return row
    return None


async def _resolve_owner(
    s: AsyncSession, env: str, ext: ExternalSubscription, pending: PendingSubscription | None
) -> tuple[Customer, Plan, int] | None:
    if pending is not None:
        c = await s.get(Customer, pending.customer_id)
        plan = await s.get(Plan, pending.plan_id)
        return (c, plan, pending.grace_period_days) if c and plan else None
    cid = ext.metadata.get("tansoCustomerId")
    c = await s.get(Customer, cid) if cid else None
    if c is None and ext.customer_external_id:
        c = await s.scalar(
            select(Customer).where(
                Customer.environment_id == env,
                Customer.provider_customer_id == ext.customer_external_id,
            )
        )
    plan = await plan_for_price(s, env, ext.price_ids)
    if plan is None and ext.metadata.get("tansoPlanId"):
        plan = await s.get(Plan, ext.metadata["tansoPlanId"])
    if c is None or c.environment_id != env or plan is None or plan.environment_id != env:
        return None
    return c, plan, billing.GRACE_DEFAULT


async def materialise(
    s: AsyncSession,
    env: str,
    ext: ExternalSubscription,
    now: datetime,
    fx: billing.Effects,
    *,
    checkout_id: str | None = None,
) -> Subscription | None:
    """The engine's subscription for a Stripe subscription: found, or created once
    Stripe has it live (a checkout's subscription exists here only after it is paid)."""
    sub = await subscription_by_external(s, env, ext.external_id)
    if sub is not None:
        return sub
    if ext.status not in PAID_STATES:
        return None  # incomplete (not paid yet) or already over: nothing to mirror
    pending = await _pending_for(s, env, ext, checkout_id)
    owner = await _resolve_owner(s, env, ext, pending)
    if owner is None:
        return None
    customer, plan, grace = owner
    start = ext.current_period_start or start_of_day(now)
    end = ext.current_period_end or add_months(start, plan.interval_months, start.day)
    sub_id = new_id()
    inserted = await insert_ignore(
        s,
        Subscription.__table__,
        {
            "id": sub_id,
            "environment_id": env,
            "customer_id": customer.id,
            "plan_id": plan.id,
            "is_active": True,
            "interval_months": plan.interval_months,
            "grace_period_days": grace,
            "billing_anchor_day": start.day,
            "started_at": start,
            "current_period_start": start,
            "current_period_end": end,
            "cancel_mode": "END_OF_PERIOD" if ext.cancel_at_period_end else None,
            "cancel_effective_at": end if ext.cancel_at_period_end else None,
            "provider_subscription_id": ext.external_id,
            "metadata": {},
            "created_at": now,
            "modified_at": now,
        },
    )
    sub = await subscription_by_external(s, env, ext.external_id)
    if not inserted or sub is None:
        return sub
    fx.subscription_id = sub.id
    fx.status_after = "active"
    fx.plan_after = billing._plan_brief(plan)
    # the prices Stripe bills it (those of the plan when it was subscribed)
    await stripe_items.record(
        s, sub.id, stripe_items.full(await plan_data(s, plan), start), bump=False
    )
    await billing.reconcile_entitlements(s, env, sub, plan, now, fx)
    await billing.provision_period_credits(s, env, sub, plan, start, now, fx)
    if pending is not None:
        await s.execute(
            update(PendingSubscription)
            .where(PendingSubscription.id == pending.id)
            .values(status="COMPLETED", subscription_id=sub.id, modified_at=now)
            .execution_options(synchronize_session=False)
        )
    fx.event("subscription.created", subscriptionId=sub.id, planId=plan.id)
    fx.event("subscription.activated", subscriptionId=sub.id)
    return sub


async def end_subscription(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    ended_at: datetime,
    now: datetime,
    fx: billing.Effects,
) -> None:
    """Stripe ended the subscription: access and plan credits go, as when a native
    subscription ends (no refund here: Stripe owns the money)."""
    mode = sub.cancel_mode or "IMMEDIATE"
    res = await s.execute(
        update(Subscription)
        .where(Subscription.id == sub.id, Subscription.ended_at.is_(None))
        .values(
            is_active=False,
            ended_at=ended_at,
            cancel_mode=mode,
            cancel_effective_at=sub.cancel_effective_at or ended_at,
            cancelled_at=sub.cancelled_at or now,
            modified_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if not rowcount(res):
        return
    await s.refresh(sub)
    await billing.revoke_entitlements(s, sub, now, fx)
    fx.add_credits(
        fx.credits_clawed_back, await credits.claw_back_subscription(s, env, sub.id, now)
    )
    await billing._cancel_pending_changes(s, sub.id, now, fx)
    fx.event("subscription.cancelled", subscriptionId=sub.id, mode=mode)


async def converge_subscription(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    ext: ExternalSubscription,
    now: datetime,
    fx: billing.Effects,
) -> None:
    sub = await billing.load_subscription(s, env, sub.id, lock=True)
    fx.subscription_id = sub.id
    if sub.ended_at is not None:
        return  # over here for good: a late "active" never reactivates it
    if ext.status in ENDED_STATES or ext.ended_at is not None:
        await end_subscription(s, env, sub, ext.ended_at or now, now, fx)
        return
    values: dict[str, Any] = {}
    if ext.cancel_at_period_end and sub.cancel_mode is None:
        values = {
            "cancel_mode": "END_OF_PERIOD",
            "cancel_effective_at": ext.current_period_end or sub.current_period_end,
            "cancelled_at": now,
        }
        fx.event("subscription.cancel_scheduled", subscriptionId=sub.id)
    elif not ext.cancel_at_period_end and sub.cancel_mode == "END_OF_PERIOD":
        values = {"cancel_mode": None, "cancel_effective_at": None, "cancelled_at": None}
        fx.event("subscription.cancellation_undone", subscriptionId=sub.id)
    if values:
        await s.execute(
            update(Subscription)
            .where(Subscription.id == sub.id, Subscription.ended_at.is_(None))
            .values(**values, modified_at=now)
            .execution_options(synchronize_session=False)
        )
    # a plan changed on Stripe's side (or a change of ours, confirmed) is followed here;
    # not the next period's plan of a scheduled change, which Stripe already bills
    # from its renewal while the engine keeps the current plan until the period ends
    if sub.plan_id in await _plans_billed(s, env, ext):
        return
    plan = await plan_for_price(s, env, ext.price_ids)
    pending = await billing.pending_change(s, sub.id)
    if pending is not None and plan is not None and pending.to_plan_id == plan.id:
        return
    if plan is not None and plan.id != sub.plan_id:
        await switch_plan(s, env, sub, plan, now, fx)


async def _plans_billed(s: AsyncSession, env: str, ext: ExternalSubscription) -> set[str]:
    if not ext.price_ids:
        return set()
    return set(
        (
            await s.scalars(
                select(Plan.id).where(
                    Plan.environment_id == env, Plan.provider_price_id.in_(ext.price_ids)
                )
            )
        ).all()
    )


async def switch_plan(
    s: AsyncSession, env: str, sub: Subscription, target: Plan, now: datetime, fx: billing.Effects
) -> None:
    """The subscription now bills ``target`` in Stripe: swap the plan here once
    (conditional on the plan it had), with the billing service's plan-change rules —
    entitlements reconciled, the credit delta granted — and the change recorded as done
    (a scheduled change to this plan is completed, any other one cancelled)."""
    current = await required(s, Plan, sub.plan_id)
    res = await s.execute(
        update(Subscription)
        .where(Subscription.id == sub.id, Subscription.plan_id == current.id)
        .values(plan_id=target.id, interval_months=target.interval_months, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if not rowcount(res):
        return
    await billing.grant_upgrade_credits(s, env, sub, current, target, now, fx)
    sub = await billing.load_subscription(s, env, sub.id)
    if sub.is_active and not await billing.has_past_due(s, sub.id):
        await billing.reconcile_entitlements(s, env, sub, target, now, fx)
    pending = await billing.pending_change(s, sub.id)
    if pending is not None and pending.to_plan_id == target.id:
        pending.status, pending.fulfilled_at = "COMPLETED", now
        change = pending
    else:
        await billing._cancel_pending_changes(s, sub.id, now, fx)
        change = ScheduledChange(
            id=new_id(),
            environment_id=env,
            subscription_id=sub.id,
            type="UPGRADE" if target.price_minor >= current.price_minor else "DOWNGRADE",
            from_plan_id=current.id,
            to_plan_id=target.id,
            status="COMPLETED",
            effective_at=now,
            fulfilled_at=now,
            created_at=now,
        )
        s.add(change)
    await s.flush()
    fx.scheduled_change = billing._change_view(change)
    fx.plan_before, fx.plan_after = billing._plan_brief(current), billing._plan_brief(target)
    fx.effective_at = now
    fx.event(
        "subscription.plan_changed",
        subscriptionId=sub.id,
        fromPlanId=current.id,
        toPlanId=target.id,
    )


# --------------------------------------------------------------------------- invoices

_TYPES = {
    "subscription_create": "IN_ADVANCE_INITIAL",
    "subscription_cycle": "REGULAR",
}
_STATUS = {
    "draft": "PENDING",
    "open": "DUE",
    "paid": "PAID",
    "void": "VOID",
    "uncollectible": "PAST_DUE",
}


def _lines(ext: ExternalInvoice) -> list[inv_svc.Line]:
    out = []
    for line in ext.lines:
        kind = "adjustment" if line.proration else "usage" if line.metered else "base"
        out.append(
            inv_svc.Line(
                kind, line.description or kind, from_minor(line.amount_minor, ext.currency)
            )
        )
    return out


async def _replace_lines(
    s: AsyncSession, inv: Invoice, ext: ExternalInvoice, now: datetime
) -> None:
    lines = _lines(ext)
    await s.execute(delete(InvoiceItem).where(InvoiceItem.invoice_id == inv.id))
    minors = [inv_svc.to_minor(x.amount, ext.currency) for x in lines]
    await inv_svc.write_lines(s, inv.environment_id, inv.id, lines, minors, now)
    await s.execute(
        update(Invoice)
        .where(Invoice.id == inv.id, Invoice.status.in_(inv_svc.UNPAID))
        .values(amount_minor=ext.amount_due_minor, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    await s.refresh(inv)


async def _renew_to(
    s: AsyncSession,
    env: str,
    sub: Subscription,
    new_start: datetime,
    new_end: datetime | None,
    now: datetime,
    fx: billing.Effects,
) -> Subscription:
    """Stripe started a new period: move to it once (conditional on the old start),
    rolling credits over by the billing service's rule."""
    if new_start <= sub.current_period_start:
        return sub
    plan = await required(s, Plan, sub.plan_id)
    end = (
        new_end
        if new_end and new_end > new_start
        else add_months(new_start, plan.interval_months, sub.billing_anchor_day)
    )
    res = await s.execute(
        update(Subscription)
        .where(
            Subscription.id == sub.id,
            Subscription.current_period_start == sub.current_period_start,
            Subscription.ended_at.is_(None),
        )
        .values(current_period_start=new_start, current_period_end=end, modified_at=now)
        .execution_options(synchronize_session=False)
    )
    if not rowcount(res):
        return await billing.load_subscription(s, env, sub.id)
    sub = await billing.load_subscription(s, env, sub.id)
    await billing._rollover(s, env, sub, new_start, now, fx)
    if (
        sub.cancel_mode == "END_OF_PERIOD"
        and sub.cancel_effective_at
        and sub.cancel_effective_at <= new_start
    ):
        # Stripe renewed after all, so the cancellation was withdrawn there
        await s.execute(
            update(Subscription)
            .where(Subscription.id == sub.id)
            .values(cancel_mode=None, cancel_effective_at=None, cancelled_at=None)
            .execution_options(synchronize_session=False)
        )
        sub = await billing.load_subscription(s, env, sub.id)
    fx.event("subscription.renewed", subscriptionId=sub.id, periodStart=new_start, periodEnd=end)
    return sub


async def mirror_invoice(
    s: AsyncSession,
    env: str,
    ext: ExternalInvoice,
    ext_sub: ExternalSubscription | None,
    now: datetime,
    fx: billing.Effects,
    *,
    failed: bool = False,
) -> Invoice | None:
    """Record Stripe's invoice here (once) and follow its status: paid → PAID with the
    native consequences (activation, restoration, the period's plan credits); a failed
    or uncollectible payment → PAST_DUE with entitlements revoked; void → VOID."""
    if not ext.subscription_external_id:
        return None
    sub = await subscription_by_external(s, env, ext.subscription_external_id)
    if sub is None:
        return None
    sub = await billing.load_subscription(s, env, sub.id, lock=True)
    fx.subscription_id = sub.id
    fx.status_before = fx.status_before or await billing.status_of(s, sub)
    itype = _TYPES.get(ext.billing_reason or "", "ADJUSTMENT")
    target = _STATUS.get(ext.status, "PENDING")
    if target == "DUE" and failed:
        target = "PAST_DUE"
    if (
        target == "DUE"
        and ext_sub is not None
        and ext_sub.status in ("past_due", "unpaid")
        and ext_sub.latest_invoice_id == ext.external_id
    ):
        target = "PAST_DUE"
    if itype == "REGULAR" and ext.period_end is not None:
        start = ext.period_end  # Stripe bills a new period at its start
        end = (
            ext_sub.current_period_end
            if ext_sub and ext_sub.current_period_start == start
            else None
        )
        if target == "PAID" and sub.ended_at is None:
            sub = await _renew_to(s, env, sub, start, end, now, fx)
        period: tuple[datetime | None, datetime | None] = (
            start,
            end or sub.current_period_end if start == sub.current_period_start else end,
        )
    elif itype == "IN_ADVANCE_INITIAL":
        period = (
            sub.started_at,
            sub.current_period_end if sub.current_period_start == sub.started_at else None,
        )
    else:
        period = (ext.period_start, ext.period_end)
    inv = await s.scalar(
        select(Invoice)
        .where(Invoice.environment_id == env, Invoice.provider_invoice_id == ext.external_id)
        .execution_options(populate_existing=True)
    )
    if inv is None:
        lines = _lines(ext)
        minors = [inv_svc.to_minor(x.amount, ext.currency) for x in lines]
        inv_id = new_id()
        try:
            async with s.begin_nested():
                await s.execute(
                    cast(Table, Invoice.__table__)
                    .insert()
                    .values(
                        id=inv_id,
                        environment_id=env,
                        customer_id=sub.customer_id,
                        subscription_id=sub.id,
                        type=itype,
                        status="PENDING" if target in ("PAID", "PAST_DUE") else target,
                        amount_minor=ext.amount_due_minor,
                        currency=ext.currency,
                        due_date=ext.due_date or start_of_day(now),
                        period_start=period[0],
                        period_end=period[1],
                        provider_invoice_id=ext.external_id,
                        metadata={"provider": "stripe", "billingReason": ext.billing_reason},
                        created_at=now,
                        modified_at=now,
                    )
                )
                await inv_svc.write_lines(s, env, inv_id, lines, minors, now)
        except IntegrityError:  # mirrored concurrently, or the type's period is taken
            pass
        inv = await s.scalar(
            select(Invoice)
            .where(Invoice.environment_id == env, Invoice.provider_invoice_id == ext.external_id)
            .execution_options(populate_existing=True)
        )
        if inv is None:
            return None
        if inv.id == inv_id:
            await billing._record_invoice(s, fx, inv, "invoices_created")
            fx.event("invoice.created", invoiceId=inv.id, type=inv.type, status=inv.status)
    if inv.status in inv_svc.UNPAID and inv.amount_minor != ext.amount_due_minor:
        await _replace_lines(s, inv, ext, now)  # a draft's amount changes until it is final
    if inv.status in ("PAID", "VOID") or target == inv.status:
        return inv
    if target == "PAID":
        await billing._settle(s, env, inv, now, fx)
    elif target == "PAST_DUE":
        if await inv_svc.set_status(s, inv, "PAST_DUE", now, only_from=inv_svc.OPEN):
            fx.event("invoice.past_due", invoiceId=inv.id)
            await billing.revoke_entitlements(s, sub, now, fx)
            if fx.status_before != "past_due":
                fx.event("subscription.past_due", subscriptionId=sub.id, invoiceId=inv.id)
    elif target == "VOID":
        if await inv_svc.set_status(s, inv, "VOID", now, only_from=inv_svc.UNPAID):
            fx.event("invoice.voided", invoiceId=inv.id)
            sub = await billing.load_subscription(s, env, sub.id)
            if sub.is_active and sub.ended_at is None and not await billing.has_past_due(s, sub.id):
                await billing.reconcile_entitlements(
                    s, env, sub, await required(s, Plan, sub.plan_id), now, fx
                )
    elif target == "DUE" and inv.status == "PENDING":
        if await inv_svc.set_status(s, inv, "DUE", now, only_from=("PENDING",)):
            fx.event(
                "invoice.due", invoiceId=inv.id, amount=from_minor(inv.amount_minor, inv.currency)
            )
    sub = await billing.load_subscription(s, env, sub.id)
    fx.status_after = await billing.status_of(s, sub)
    return inv

"""Subscriptions and invoices when Stripe collects payments (Stripe Integration mode).

The same REST routes and MCP tools as native billing call these (through a one-line
capability branch in ``billing_ops``). The engine's rules are the billing service's own;
what differs is who moves first: Stripe. Every operation

1. reads and validates in a read-only session (the same checks native billing makes),
2. calls Stripe outside any transaction with an idempotency key derived from engine ids
   (a retry repeats the same Stripe call, never a second charge or subscription),
3. applies Stripe's answer in one unit of work through ``stripe_mirror``.

A Stripe error answers ``stripe_api_error`` (HTTP 502) with Stripe's message and
applies nothing. Previews (``confirmAction`` without ``true``) never call Stripe.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from ..db.models import (
    Customer,
    Environment,
    Invoice,
    PendingSubscription,
    Plan,
    Subscription,
)
from ..db.types import new_id
from ..domain.money import from_minor
from ..errors import InvalidRequest, NotFound, StripeApiError
from ..plugin.api import (
    ExternalSubscription,
    InvoiceData,
    PaymentProvider,
    ProviderError,
    SubscriptionData,
)
from ..principal import Principal
from . import billing, customers
from . import invoices as inv_svc
from .stripe_mirror import converge_subscription, materialise, mirror_invoice, switch_plan
from .stripe_setup import checkout_urls, stripe_error
from .stripe_sync import customer_data, plan_data, provider_invoicing, sync_customer, sync_plan

if TYPE_CHECKING:
    from ..bootstrap import AppContext

log = logging.getLogger("tanso_mcp.stripe")

CHECKOUT_REUSE = timedelta(hours=23)


async def announce(ctx: AppContext, p: Principal, fx: billing.Effects) -> None:
    ctx.invalidate(p.environment_id)
    for name, payload in fx.events:
        await ctx.emit(name, p, payload)


def _ext(ref: Any) -> ExternalSubscription | None:
    return ref if isinstance(ref, ExternalSubscription) else None


# --------------------------------------------------------------------------- subscribe


async def _live_subscription(s, customer: Customer) -> Subscription | None:
    return await s.scalar(
        select(Subscription)
        .where(Subscription.customer_id == customer.id, Subscription.ended_at.is_(None))
        .limit(1)
    )


async def create_subscription(
    ctx: AppContext,
    p: Principal,
    provider: PaymentProvider,
    *,
    customer_ref: str,
    plan_id: str | None,
    plan_key: str | None,
    grace_days: int,
) -> dict[str, Any]:
    """Paid in-advance plans: a Checkout Session; nothing exists here until Stripe
    confirms the payment (webhooks). In-arrears and free plans: a Stripe subscription
    created directly, active at once. One live subscription per customer."""
    env = p.environment_id
    async with ctx.db.reader() as s:
        from .billing_ops import resolve_plan

        customer = await customers.by_reference(s, env, customer_ref)
        plan = await resolve_plan(s, env, plan_id, plan_key)
        field = "planId" if plan_id else "planKey"
        if plan.status != "ACTIVE":
            raise InvalidRequest(
                f"only ACTIVE plans accept subscriptions (plan {plan.key} is {plan.status})",
                field=field,
            )
        live = await _live_subscription(s, customer)
        if live is not None:
            raise InvalidRequest(
                f"customer {customer.reference_id!r} already has subscription {live.id}; "
                "with Stripe collecting payments a customer holds one subscription at a "
                "time: change its plan (changeSubscriptionPlan) or cancel it first",
                field="customerReferenceId",
                detail={"subscriptionId": live.id},
            )
        environment = await s.get(Environment, env)
        success_url, cancel_url = checkout_urls(ctx, environment)
        checkout = plan.billing_timing == "IN_ADVANCE" and plan.price_minor > 0
        reuse = await s.scalar(
            select(PendingSubscription)
            .where(
                PendingSubscription.customer_id == customer.id,
                PendingSubscription.plan_id == plan.id,
                PendingSubscription.kind == "CHECKOUT",
                PendingSubscription.status == "OPEN",
                # Stripe expires a Checkout Session after 24 hours
                PendingSubscription.created_at > await ctx.now(p) - CHECKOUT_REUSE,
            )
            .order_by(PendingSubscription.created_at.desc())
            .limit(1)
        )
    if checkout and reuse is not None and reuse.url:
        return _checkout_answer(reuse.external_id, reuse.url)
    cdata = await sync_customer(ctx, provider, env, customer.id)
    pdata = await sync_plan(ctx, provider, env, plan.id)
    now = await ctx.now(p)
    pending_id = new_id()
    async with ctx.db.unit_of_work() as s:
        s.add(
            PendingSubscription(
                id=pending_id,
                environment_id=env,
                customer_id=customer.id,
                plan_id=plan.id,
                kind="CHECKOUT" if checkout else "DIRECT",
                status="PENDING",
                grace_period_days=grace_days,
                created_at=now,
                modified_at=now,
            )
        )
    meta = {
        "tansoPendingId": pending_id,
        "tansoCustomerId": customer.id,
        "tansoPlanId": plan.id,
        "tansoEnvironmentId": env,
        "customerReferenceId": customer.reference_id,
    }
    try:
        if checkout:
            from ..plugin.api import CheckoutRequest

            ref = await provider.start_checkout(
                CheckoutRequest(
                    reference=pending_id,
                    customer=cdata,
                    plan=pdata,
                    success_url=success_url,
                    cancel_url=cancel_url,
                    metadata=meta,
                ),
                idempotency_key=f"checkout:{pending_id}",
            )
            ext = None
        else:
            ref = await provider.upsert_subscription(
                SubscriptionData(
                    subscription_id=pending_id,
                    customer=cdata,
                    plan=pdata,
                    period_start=now,
                    period_end=now,
                    metadata=meta,
                    days_until_due=ctx.settings.stripe_days_until_due,
                ),
                idempotency_key=f"subscription:{pending_id}",
            )
            ext = _ext(ref)
    except ProviderError as exc:
        await _fail_pending(ctx, pending_id, exc.message, now)
        raise stripe_error(exc) from None
    if ref is None:
        await _fail_pending(ctx, pending_id, "the provider returned nothing", now)
        raise StripeApiError("Stripe returned no object")
    async with ctx.db.unit_of_work() as s:
        # the webhook Stripe sends while answering may be mirroring the same
        # subscription concurrently: both take the subscription first, then the pending
        # row (one lock order), and the subscription is inserted once (unique index)
        sub = None
        fx = None
        if not checkout:
            fx = billing.Effects(action="SUBSCRIBE")
            sub = await materialise(s, env, ext, now, fx) if ext else None
        await s.execute(
            update(PendingSubscription)
            .where(PendingSubscription.id == pending_id)
            .values(
                status="COMPLETED" if sub is not None else "OPEN",
                subscription_id=sub.id if sub is not None else None,
                external_id=ref.external_id,
                url=getattr(ref, "url", None),
                modified_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if checkout:
            out = _checkout_answer(ref.external_id, ref.url)
        else:
            if sub is None:
                raise StripeApiError(
                    f"Stripe created subscription {ref.external_id} but it is not active "
                    f"({ext.status if ext else 'unknown'})"
                )
            from .billing_ops import subscription_out

            out = {
                "subscription": await subscription_out(s, env, sub.id),
                "invoice": None,
                "message": "Subscription created and active; Stripe invoices it.",
            }
    if fx is not None:
        await announce(ctx, p, fx)
    return out


def annotate_preview(out: dict[str, Any]) -> dict[str, Any]:
    """A preview in Stripe mode is the billing rule's own, computed without calling
    Stripe: the money side is Stripe's to settle."""
    out.setdefault("notes", []).append(
        "Stripe collects payments in this environment: invoices, prorations and refunds "
        "are computed by Stripe and mirrored here; the amounts shown are estimates"
    )
    return out


def _checkout_answer(session_id: str | None, url: str | None) -> dict[str, Any]:
    return {
        "subscription": None,
        "invoice": None,
        "checkoutUrl": url,
        "checkoutSessionId": session_id,
        "message": "Send the customer to checkoutUrl to pay; the subscription, its paid "
        "invoice, entitlements and credits appear once Stripe confirms the payment.",
    }


async def _fail_pending(ctx: AppContext, pending_id: str, message: str, now: datetime) -> None:
    async with ctx.db.unit_of_work() as s:
        await s.execute(
            update(PendingSubscription)
            .where(PendingSubscription.id == pending_id)
            .values(status="FAILED", error=message[:2000], modified_at=now)
            .execution_options(synchronize_session=False)
        )


# --------------------------------------------------------------------------- changes


async def _answer(s, env: str, sub_id: str, fx: billing.Effects) -> dict[str, Any]:
    """The same answer as native billing's for the same operation."""
    from .billing_ops import _message, subscription_out

    out: dict[str, Any] = {"success": True, "message": _message(fx)}
    out["subscription"] = await subscription_out(s, env, sub_id)
    out.update(fx.to_json())
    return out


def _state_key(action: str, sub: Subscription, *parts: str) -> str:
    """Idempotency key of a change to a Stripe subscription: derived from the number of
    changes already recorded for it (``provider_ops``, bumped when a change is
    applied). A retry after a failure or crash sends the same key (Stripe answers what
    it did the first time); the next change — say cancel, undo, cancel — has a new one."""
    return ":".join((action, sub.id, *parts, str(sub.provider_ops)))


async def _bump_ops(s, sub_id: str) -> None:
    await s.execute(
        update(Subscription)
        .where(Subscription.id == sub_id)
        .values(provider_ops=Subscription.provider_ops + 1)
        .execution_options(synchronize_session=False)
    )


async def _subscription_data(s, env: str, sub: Subscription) -> SubscriptionData:
    plan = await s.get(Plan, sub.plan_id)
    customer = await s.get(Customer, sub.customer_id)
    return SubscriptionData(
        subscription_id=sub.id,
        customer=customer_data(customer),
        plan=await plan_data(s, plan),
        period_start=sub.current_period_start,
        period_end=sub.current_period_end,
        external_id=sub.provider_subscription_id,
    )


async def _validate_in_rolled_back(ctx: AppContext, fn) -> billing.Effects:
    """Run the native rule on a transaction that is rolled back: the same validation
    (and the same preview) as native billing, without applying anything."""
    async with ctx.db.writer_sessionmaker() as s:
        trans = await s.begin()
        try:
            return await fn(s)
        finally:
            await trans.rollback()


async def change_plan(
    ctx: AppContext,
    p: Principal,
    provider: PaymentProvider,
    sub_id: str,
    to_plan_id: str,
    change_type: str,
    *,
    plan_field: str,
) -> dict[str, Any]:
    """UPGRADE (same billing timing and interval): Stripe swaps the price now and
    prorates (its adjustment invoice is mirrored from the webhooks); the engine swaps
    the plan, entitlements and credit delta at once. Anything else is scheduled for
    the period end here and applied to Stripe at the boundary (``apply_due_changes``)."""
    env = p.environment_id
    now = await ctx.now(p)
    dry = await _validate_in_rolled_back(
        ctx,
        lambda s: billing.change_plan(
            s, env, now, sub_id, to_plan_id, change_type, plan_field=plan_field
        ),
    )
    immediate = dry.scheduled_change is not None and dry.scheduled_change["status"] == "COMPLETED"
    if immediate:
        async with ctx.db.reader() as s:
            sub = await billing.load_subscription(s, env, sub_id)
            target = await s.get(Plan, to_plan_id)
        sdata_target = await sync_plan(ctx, provider, env, target.id)
        async with ctx.db.reader() as s:
            sdata = await _subscription_data(s, env, sub)
        try:
            ext = await provider.change_plan(
                sdata,
                sdata_target,
                prorate=True,
                idempotency_key=_state_key("upgrade", sub, target.id),
            )
        except ProviderError as exc:
            raise stripe_error(exc) from None
    async with ctx.db.unit_of_work() as s:
        if immediate:
            # Stripe prorates and invoices the difference (mirrored from its webhooks);
            # the engine follows Stripe's subscription — possibly already done by the
            # webhook Stripe sent while answering, then this changes nothing
            sub = await billing.load_subscription(s, env, sub_id, lock=True)
            fx = billing.Effects(
                action="UPGRADE",
                subscription_id=sub.id,
                status_before=await billing.status_of(s, sub),
                plan_before=dry.plan_before,
                plan_after=dry.plan_after,
            )
            await _bump_ops(s, sub.id)
            target_plan = await s.get(Plan, to_plan_id)
            if sub.plan_id != target_plan.id:
                await switch_plan(s, env, sub, target_plan, now, fx)
            if ext is not None:
                sub = await billing.load_subscription(s, env, sub_id)
                await converge_subscription(s, env, sub, ext, now, fx)
            fx.scheduled_change = fx.scheduled_change or dry.scheduled_change
            fx.effective_at = now
            fx.notes.append("Stripe prorates the change and invoices the difference")
            sub = await billing.load_subscription(s, env, sub_id)
            fx.status_after = await billing.status_of(s, sub)
        else:
            fx = await billing.change_plan(
                s, env, now, sub_id, to_plan_id, change_type, plan_field=plan_field
            )
        out = await _answer(s, env, sub_id, fx)
    await announce(ctx, p, fx)
    return out


async def cancel(
    ctx: AppContext, p: Principal, provider: PaymentProvider, sub_id: str, mode: str
) -> dict[str, Any]:
    """END_OF_PERIOD: Stripe's ``cancel_at_period_end``; Stripe ends it and the
    ``customer.subscription.deleted`` webhook revokes access. IMMEDIATE: Stripe cancels
    now; entitlements revoked and plan credits clawed back at once."""
    env = p.environment_id
    now = await ctx.now(p)
    mode = (mode or "END_OF_PERIOD").upper()
    if mode == "IMMEDIATELY":
        mode = "IMMEDIATE"
    await _validate_in_rolled_back(
        ctx, lambda s: billing.cancel_subscription(s, env, sub_id, mode, now)
    )
    async with ctx.db.reader() as s:
        sub = await billing.load_subscription(s, env, sub_id)
        sdata = await _subscription_data(s, env, sub)
    immediate = mode == "IMMEDIATE"
    try:
        ext = await provider.cancel_subscription(
            sdata,
            immediate=immediate,
            idempotency_key=_state_key("cancel", sub, mode),
        )
    except ProviderError as exc:
        raise stripe_error(exc) from None
    ext = _ext(ext)
    async with ctx.db.unit_of_work() as s:
        sub = await billing.load_subscription(s, env, sub_id, lock=True)
        await _bump_ops(s, sub.id)
        if not immediate:
            fx = await billing.cancel_subscription(s, env, sub_id, mode, now)
        else:
            fx = billing.Effects(
                action=f"CANCEL_{mode}",
                subscription_id=sub.id,
                status_before=await billing.status_of(s, sub),
                plan_before=billing._plan_brief(await s.get(Plan, sub.plan_id)),
            )
        if immediate:
            from .stripe_mirror import end_subscription

            await end_subscription(s, env, sub, now, now, fx)
            for inv in (
                await s.scalars(
                    select(Invoice).where(
                        Invoice.subscription_id == sub.id,
                        Invoice.status.in_(inv_svc.UNPAID),
                        Invoice.provider_invoice_id.is_(None),
                    )
                )
            ).all():
                await inv_svc.set_status(s, inv, "VOID", now, only_from=inv_svc.UNPAID)
            fx.effective_at = now
        elif ext is not None:
            await converge_subscription(s, env, sub, ext, now, billing.Effects(action="SYNC"))
        sub = await billing.load_subscription(s, env, sub_id)
        fx.status_after = await billing.status_of(s, sub)
        out = await _answer(s, env, sub_id, fx)
    await announce(ctx, p, fx)
    return out


async def undo_cancel(
    ctx: AppContext, p: Principal, provider: PaymentProvider, sub_id: str
) -> dict[str, Any]:
    env = p.environment_id
    now = await ctx.now(p)
    async with ctx.db.reader() as s:
        sub = await billing.load_subscription(s, env, sub_id)
        status = await billing.status_of(s, sub)
        sdata = await _subscription_data(s, env, sub)
    if status == "cancelled":
        raise InvalidRequest("Subscription is already cancelled", field="subscriptionId")
    ext = None
    if sub.cancel_mode == "END_OF_PERIOD":
        try:
            ext = await provider.resume_subscription(
                sdata,
                idempotency_key=_state_key("resume", sub),
            )
        except ProviderError as exc:
            raise stripe_error(exc) from None
    async with ctx.db.unit_of_work() as s:
        if ext is not None:
            await _bump_ops(s, sub_id)
        fx = await billing.undo_cancellation(s, env, sub_id, now)
        if ext is not None:
            sub = await billing.load_subscription(s, env, sub_id)
            await converge_subscription(s, env, sub, ext, now, billing.Effects(action="SYNC"))
        out = await _answer(s, env, sub_id, fx)
    await announce(ctx, p, fx)
    return out


# --------------------------------------------------------------------------- invoices


async def _invoice_data(s, inv: Invoice) -> InvoiceData:
    customer = await s.get(Customer, inv.customer_id)
    return InvoiceData(
        invoice_id=inv.id,
        customer=customer_data(customer),
        amount=from_minor(inv.amount_minor, inv.currency),
        currency=inv.currency,
        type=inv.type,
        status=inv.status,
        subscription_id=inv.subscription_id,
        external_id=inv.provider_invoice_id,
    )


async def mark_paid(
    ctx: AppContext, p: Principal, provider: PaymentProvider, invoice_id: str
) -> dict[str, Any]:
    """Paid outside Stripe (bank transfer…): Stripe records it ``paid_out_of_band`` and
    the engine mirrors Stripe's paid invoice."""
    env = p.environment_id
    now = await ctx.now(p)
    async with ctx.db.reader() as s:
        inv = await inv_svc.get_invoice(s, env, invoice_id)
        inv_svc.check_payable(inv)
        if not inv.provider_invoice_id:
            raise InvalidRequest(
                "this invoice is not a Stripe invoice; it cannot be marked paid in Stripe",
                field="invoiceId",
            )
        data = await _invoice_data(s, inv)
        sub = await s.get(Subscription, inv.subscription_id) if inv.subscription_id else None
    try:
        ext_inv = await provider.mark_invoice_paid(data, idempotency_key=f"mark-paid:{inv.id}")
        ext_sub = (
            await provider.retrieve("subscription", sub.provider_subscription_id)
            if sub is not None and sub.provider_subscription_id
            else None
        )
    except ProviderError as exc:
        raise stripe_error(exc) from None
    async with ctx.db.unit_of_work() as s:
        fx = billing.Effects(action="MARK_PAID", subscription_id=inv.subscription_id)
        if ext_inv is not None:
            await mirror_invoice(s, env, ext_inv, _ext(ext_sub), now, fx)
        from .billing_ops import _message

        out: dict[str, Any] = {"success": True, "message": _message(fx)}
        out.update(fx.to_json())
        out["invoice"] = await inv_svc.invoice_detail(s, env, invoice_id)
    await announce(ctx, p, fx)
    return out


async def invoice_payment_page(
    ctx: AppContext,
    p: Principal,
    *,
    invoice_id: str | None = None,
    subscription_id: str | None = None,
) -> dict[str, Any]:
    env = p.environment_id
    async with ctx.db.reader() as s:
        provider = await provider_invoicing(ctx, s, env)
        if provider is None:
            raise InvalidRequest(
                "Stripe is not enabled for this environment (registerStripeApiKey, then "
                "setupStripeIntegration)",
                field="invoiceId" if invoice_id else "subscriptionId",
            )
        if invoice_id is not None:
            inv = await inv_svc.get_invoice(s, env, invoice_id)
        else:
            sub = await billing.load_subscription(s, env, subscription_id)
            inv = await s.scalar(
                select(Invoice)
                .where(
                    Invoice.subscription_id == sub.id,
                    Invoice.status.in_(inv_svc.UNPAID),
                    Invoice.provider_invoice_id.is_not(None),
                )
                .order_by(Invoice.created_at)
                .limit(1)
            )
            if inv is None:
                raise NotFound(
                    f"subscription {sub.id} has no open Stripe invoice", field="subscriptionId"
                )
        if inv.status == "PAID":
            return {"url": "", "invoiceId": inv.id, "status": inv.status}
        if not inv.provider_invoice_id:
            raise InvalidRequest("this invoice is not a Stripe invoice", field="invoiceId")
        data = await _invoice_data(s, inv)
    try:
        ref = await provider.invoice_payment_url(data)
    except ProviderError as exc:
        raise stripe_error(exc) from None
    return {"url": (ref.url if ref else None) or "", "invoiceId": inv.id, "status": inv.status}

"""Billing use cases at the transport boundary, shared by the REST routes and the MCP
tools: one unit of work per call, then (after the commit) cache invalidation and the
domain events. A REST endpoint and its MCP tool call the same function here.

Previews (``confirmAction`` tools) call the same service function as the real
operation inside a transaction that is always rolled back, and describe the returned
:class:`~tanso_mcp.services.billing.Effects` — the preview is computed by the code that
would apply the change, so the two cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import CreditGrant, CreditModel, CreditPool, CreditTransaction, Customer, Plan
from ..db.scale import int_to_qty
from ..domain.money import to_decimal
from ..domain.periods import parse_datetime
from ..errors import Conflict, InvalidRequest, NotFound, PreconditionFailed
from ..plugin.api import CORE_INVOICING, MARK_PAID, InvoicingProvider
from ..principal import Principal
from . import billing, catalog, credits, customers, payments, stripe_billing, stripe_sync
from . import invoices as inv_svc
from .subscriptions import subscription_view
from .views import pool_view

if TYPE_CHECKING:
    from ..context import AppContext

DENOM_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

# --------------------------------------------------------------------------- plumbing


def _announce(s: AsyncSession, ctx: AppContext, p: Principal, fx: billing.Effects) -> None:
    """Record the cache invalidation and the domain events on the unit of work (run
    after its commit)."""
    ctx.changed(s, p.environment_id)
    for name, payload in fx.events:
        ctx.announce(s, name, p, payload)


async def preview(
    ctx: AppContext, fn: Callable[[AsyncSession], Awaitable[billing.Effects]]
) -> dict[str, Any]:
    """Run ``fn`` in a transaction that is rolled back; describe what it did."""
    async with ctx.db.writer_sessionmaker() as s:
        trans = await s.begin()
        try:
            fx = await fn(s)
            return {"dryRun": True, **fx.to_json(with_ids=False)}
        finally:
            await trans.rollback()


async def subscription_out(s: AsyncSession, env: str, sub_id: str) -> dict[str, Any]:
    sub = await billing.load_subscription(s, env, sub_id)
    plan = await s.get(Plan, sub.plan_id)
    customer = await s.get(Customer, sub.customer_id)
    pending = await billing.pending_change(s, sub.id)
    return subscription_view(
        sub, plan, customer, has_past_due=await billing.has_past_due(s, sub.id), scheduled=pending
    )


def _message(fx: billing.Effects) -> str:
    parts = {
        "SUBSCRIBE": "Subscription created",
        "UPGRADE": "Plan changed",
        "DOWNGRADE": "Plan change scheduled",
        "CANCEL_IMMEDIATE": "Subscription cancelled",
        "CANCEL_END_OF_PERIOD": "Cancellation scheduled for the end of the period",
        "UNDO_CANCELLATION": "Scheduled cancellation undone",
        "UNDO_PLAN_CHANGE": "Scheduled plan change cancelled",
        "MARK_PAID": "Invoice marked paid",
    }
    msg = parts.get(fx.action, fx.action)
    if (
        fx.action == "UPGRADE"
        and fx.scheduled_change
        and fx.scheduled_change["status"] == "PENDING"
    ):
        msg = "Plan change scheduled"
    return f"{msg}; status {fx.status_after}." if fx.status_after else f"{msg}."


async def _provider_invoicing(ctx: AppContext, p: Principal) -> InvoicingProvider | None:
    """The environment's provider when it invoices itself (Stripe mode): then the
    lifecycle calls go to ``stripe_billing``, which applies the same rules after Stripe."""
    async with ctx.db.reader() as s:
        return await stripe_sync.provider_invoicing(ctx, s, p.environment_id)


# --------------------------------------------------------------------------- subscriptions


async def resolve_plan(
    s: AsyncSession, env: str, plan_id: str | None, plan_key: str | None
) -> Plan:
    """The plan a subscribe request names (``planId`` wins; both must agree)."""
    if plan_id:
        plan = await catalog.plan_by_id(s, env, plan_id, field="planId")
        if plan_key and plan.key != plan_key:
            raise InvalidRequest("planId and planKey name different plans", field="planKey")
        return plan
    return await catalog.plan_by_key(s, env, plan_key, field="planKey")


def _plan_ref(plan_id: str | None, plan_key: str | None) -> None:
    if not plan_id and not plan_key:
        raise InvalidRequest("planId or planKey is required", field="planId")


async def create_subscription(
    ctx: AppContext,
    p: Principal,
    *,
    customer_ref: str,
    plan_id: str | None = None,
    plan_key: str | None = None,
    grace_period: Any = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    _plan_ref(plan_id, plan_key)
    grace = billing.parse_grace(grace_period)
    customers.check_reference(customer_ref)
    env = p.environment_id
    stripe = await _provider_invoicing(ctx, p)
    if stripe is not None:
        return await stripe_billing.create_subscription(
            ctx,
            p,
            stripe,
            customer_ref=customer_ref,
            plan_id=plan_id,
            plan_key=plan_key,
            grace_days=grace,
        )
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        provider = await payments.provider_for(ctx, s, env)
        customer = await customers.by_reference(s, env, customer_ref)
        plan = await resolve_plan(s, env, plan_id, plan_key)
        if CORE_INVOICING not in provider.capabilities:
            raise PreconditionFailed(
                f"subscriptions of this environment are created through its payment "
                f"provider ({provider.name})"
            )
        fx = await billing.create_subscription(
            s,
            env,
            now,
            customer=customer,
            plan=plan,
            grace_days=grace,
            capabilities=provider.capabilities,
            plan_field="planId" if plan_id else "planKey",
            metadata=metadata,
        )
        out = {
            "subscription": await subscription_out(s, env, fx.subscription_id),
            "invoice": fx.invoices_created[0] if fx.invoices_created else None,
        }
        _announce(s, ctx, p, fx)
    return out


async def get_subscription(ctx: AppContext, p: Principal, sub_id: str) -> dict[str, Any]:
    async with ctx.db.reader() as s:
        return await subscription_out(s, p.environment_id, sub_id)


async def _write(
    ctx: AppContext,
    p: Principal,
    fn: Callable[[AsyncSession, datetime], Awaitable[billing.Effects]],
    *,
    dry_run: bool,
) -> dict[str, Any]:
    now = await ctx.now(p)
    if dry_run:
        shown = await preview(ctx, lambda s: fn(s, now))
        if await _provider_invoicing(ctx, p) is not None:
            stripe_billing.annotate_preview(shown)
        return shown
    async with ctx.db.unit_of_work() as s:
        fx = await fn(s, now)
        out: dict[str, Any] = {"success": True, "message": _message(fx)}
        if fx.subscription_id:
            out["subscription"] = await subscription_out(s, p.environment_id, fx.subscription_id)
        out.update(fx.to_json())
        _announce(s, ctx, p, fx)
    return out


async def change_plan(
    ctx: AppContext,
    p: Principal,
    sub_id: str,
    to_plan_id: str,
    change_type: str,
    *,
    plan_field: str = "changeToPlanId",
    dry_run: bool = False,
) -> dict[str, Any]:
    env = p.environment_id
    if not dry_run and (stripe := await _provider_invoicing(ctx, p)) is not None:
        return await stripe_billing.change_plan(
            ctx, p, stripe, sub_id, to_plan_id, change_type, plan_field=plan_field
        )
    return await _write(
        ctx,
        p,
        lambda s, now: billing.change_plan(
            s, env, now, sub_id, to_plan_id, change_type, plan_field=plan_field
        ),
        dry_run=dry_run,
    )


async def undo_plan_change(ctx: AppContext, p: Principal, sub_id: str) -> dict[str, Any]:
    env = p.environment_id
    if (stripe := await _provider_invoicing(ctx, p)) is not None:
        return await stripe_billing.undo_plan_change(ctx, p, stripe, sub_id)
    return await _write(
        ctx, p, lambda s, now: billing.undo_scheduled_change(s, env, sub_id, now), dry_run=False
    )


async def cancel(
    ctx: AppContext, p: Principal, sub_id: str, mode: str | None, *, dry_run: bool = False
) -> dict[str, Any]:
    env = p.environment_id
    if not dry_run and (stripe := await _provider_invoicing(ctx, p)) is not None:
        return await stripe_billing.cancel(ctx, p, stripe, sub_id, mode or "END_OF_PERIOD")
    return await _write(
        ctx,
        p,
        lambda s, now: billing.cancel_subscription(s, env, sub_id, mode or "END_OF_PERIOD", now),
        dry_run=dry_run,
    )


async def undo_cancel(ctx: AppContext, p: Principal, sub_id: str) -> dict[str, Any]:
    env = p.environment_id
    if (stripe := await _provider_invoicing(ctx, p)) is not None:
        return await stripe_billing.undo_cancel(ctx, p, stripe, sub_id)
    return await _write(
        ctx, p, lambda s, now: billing.undo_cancellation(s, env, sub_id, now), dry_run=False
    )


# --------------------------------------------------------------------------- invoices


async def mark_paid(
    ctx: AppContext, p: Principal, invoice_id: str, *, dry_run: bool = False
) -> dict[str, Any]:
    env = p.environment_id
    now = await ctx.now(p)
    if (stripe := await _provider_invoicing(ctx, p)) is not None:
        if dry_run:  # the same rule, rolled back; Stripe is not called
            out = await preview(ctx, lambda s: billing.mark_invoice_paid(s, env, invoice_id, now))
            return stripe_billing.annotate_preview(out)
        return await stripe_billing.mark_paid(ctx, p, stripe, invoice_id)

    async def run(s: AsyncSession, now: datetime) -> billing.Effects:
        provider = await payments.provider_for(ctx, s, env)
        await inv_svc.get_invoice(s, env, invoice_id)  # 404 before the capability check
        if MARK_PAID not in provider.capabilities:
            raise InvalidRequest(
                f"invoices are collected by the payment provider ({provider.name}); "
                "mark-paid is not available",
                field="invoiceId",
            )
        return await billing.mark_invoice_paid(s, env, invoice_id, now)

    out = await _write(ctx, p, run, dry_run=dry_run)
    if not dry_run:
        async with ctx.db.reader() as s:
            out["invoice"] = await inv_svc.invoice_detail(s, env, invoice_id)
    return out


async def list_invoices(
    ctx: AppContext, p: Principal, customer_ref: str, *, limit: int = 500, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    async with ctx.db.reader() as s:
        c = await customers.by_reference(s, p.environment_id, customer_ref)
        return await inv_svc.list_for_customer(s, p.environment_id, c, limit=limit, offset=offset)


async def get_invoice(ctx: AppContext, p: Principal, invoice_id: str) -> dict[str, Any]:
    async with ctx.db.reader() as s:
        return await inv_svc.invoice_detail(s, p.environment_id, invoice_id)


# --------------------------------------------------------------------------- credits


def credit_pool_view(pool: CreditPool) -> dict[str, Any]:
    out = pool_view(pool)
    out["totalReversed"] = int_to_qty(pool.total_reversed_q)
    out["customerId"] = pool.customer_id
    return out


def grant_view(g: CreditGrant, now: datetime | None = None) -> dict[str, Any]:
    if g.voided_at is not None:
        status = "VOIDED"
    elif g.expires_at is not None and now is not None and g.expires_at <= now:
        status = "EXPIRED"
    elif g.remaining_q == 0:
        status = "DEPLETED"
    else:
        status = "ACTIVE"
    return {
        "id": g.id,
        "poolId": g.pool_id,
        "grantType": g.grant_type,
        "amount": int_to_qty(g.amount_q),
        "remaining": int_to_qty(g.remaining_q),
        "status": status,
        "expiresAt": g.expires_at,
        "idempotencyKey": g.idempotency_key,
        "subscriptionId": g.subscription_id,
        "periodStart": g.period_start,
        "description": g.description,
        "voidedAt": g.voided_at,
        "createdAt": g.created_at,
    }


def transaction_view(t: CreditTransaction) -> dict[str, Any]:
    return {
        "id": t.id,
        "poolId": t.pool_id,
        "type": t.type,
        "amount": int_to_qty(t.amount_q),
        "balanceBefore": int_to_qty(t.balance_before_q),
        "balanceAfter": int_to_qty(t.balance_after_q),
        "grantId": t.grant_id,
        "eventId": t.event_id,
        "subscriptionId": t.subscription_id,
        "description": t.description,
        "createdAt": t.created_at,
    }


async def _customer_pool(s: AsyncSession, env: str, ref: str, pool_id: str) -> CreditPool:
    c = await customers.by_reference(s, env, ref)
    pool = await s.scalar(
        select(CreditPool).where(
            CreditPool.environment_id == env,
            CreditPool.customer_id == c.id,
            CreditPool.id == pool_id,
        )
    )
    if pool is None:
        raise NotFound(f"credit pool {pool_id} not found for this customer", field="poolId")
    return pool


async def list_pools(
    ctx: AppContext, p: Principal, ref: str, *, limit: int = 500, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    env = p.environment_id
    async with ctx.db.reader() as s:
        c = await customers.by_reference(s, env, ref)
        q = select(CreditPool).where(
            CreditPool.environment_id == env, CreditPool.customer_id == c.id
        )
        total = await s.scalar(select(func.count()).select_from(q.subquery()))
        rows = (
            await s.scalars(q.order_by(CreditPool.denomination).limit(limit).offset(offset))
        ).all()
        return [credit_pool_view(x) for x in rows], int(total or 0)


async def get_pool(ctx: AppContext, p: Principal, ref: str, pool_id: str) -> dict[str, Any]:
    async with ctx.db.reader() as s:
        return credit_pool_view(await _customer_pool(s, p.environment_id, ref, pool_id))


async def list_transactions(
    ctx: AppContext, p: Principal, ref: str, pool_id: str, *, limit: int = 500, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    async with ctx.db.reader() as s:
        pool = await _customer_pool(s, p.environment_id, ref, pool_id)
        q = select(CreditTransaction).where(CreditTransaction.pool_id == pool.id)
        total = await s.scalar(select(func.count()).select_from(q.subquery()))
        rows = (
            await s.scalars(
                q.order_by(CreditTransaction.created_at, CreditTransaction.id)
                .limit(limit)
                .offset(offset)
            )
        ).all()
        return [transaction_view(t) for t in rows], int(total or 0)


async def list_grants(
    ctx: AppContext, p: Principal, ref: str, pool_id: str, *, limit: int = 500, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    now = await ctx.now(p)
    async with ctx.db.reader() as s:
        pool = await _customer_pool(s, p.environment_id, ref, pool_id)
        q = select(CreditGrant).where(CreditGrant.pool_id == pool.id)
        total = await s.scalar(select(func.count()).select_from(q.subquery()))
        rows = (
            await s.scalars(
                q.order_by(CreditGrant.created_at, CreditGrant.id).limit(limit).offset(offset)
            )
        ).all()
        return [grant_view(g, now) for g in rows], int(total or 0)


def parse_top_up(
    *, denomination: Any, amount: Any, grant_type: Any, expires_at: Any, idempotency_key: Any
) -> tuple[str, int, str, datetime | None, str]:
    if not isinstance(denomination, str) or not DENOM_RE.match(denomination.strip().upper()):
        raise InvalidRequest(
            "denomination must be an identifier such as AI_TOKENS", field="denomination"
        )
    denomination = denomination.strip().upper()
    if amount is None:
        raise InvalidRequest("amount is required", field="amount")
    value = to_decimal(amount, "amount")
    if value <= 0 or value != value.quantize(Decimal("0.0001")):
        raise InvalidRequest(
            "amount must be greater than 0 with at most 4 decimal places", field="amount"
        )
    if not isinstance(grant_type, str) or grant_type.upper() not in credits.TOPUP_GRANT_TYPES:
        raise InvalidRequest(
            f"grantType must be one of {', '.join(credits.TOPUP_GRANT_TYPES)}", field="grantType"
        )
    expires = parse_datetime(expires_at, "expiresAt") if expires_at is not None else None
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key.strip()) <= 200:
        raise InvalidRequest("idempotencyKey must be 1-200 characters", field="idempotencyKey")
    return denomination, int(value * 10000), grant_type.upper(), expires, idempotency_key.strip()


async def top_up(
    ctx: AppContext,
    p: Principal,
    ref: str,
    *,
    denomination: Any,
    amount: Any,
    grant_type: Any,
    expires_at: Any = None,
    idempotency_key: Any = None,
) -> dict[str, Any]:
    """Add purchased, promotional or manual credits to a customer's pool (created on
    first use with its denomination's settings). A reused idempotency key is a 409."""
    denom, amount_q, gtype, expires, key = parse_top_up(
        denomination=denomination,
        amount=amount,
        grant_type=grant_type,
        expires_at=expires_at,
        idempotency_key=idempotency_key,
    )
    env = p.environment_id
    now = await ctx.now(p)
    if expires is not None and expires <= now:
        raise InvalidRequest("expiresAt must be in the future", field="expiresAt")
    async with ctx.db.unit_of_work() as s:
        c = await customers.by_reference(s, env, ref)
        existing = await credits.find_grant_by_key(s, env, key)
        if existing is not None:
            raise Conflict(
                "a grant with this idempotencyKey already exists",
                field="idempotencyKey",
                detail={"grantId": existing.id},
            )
        pool = await credits.find_pool(s, env, c.id, denom)
        if pool is None:
            model = await s.scalar(
                select(CreditModel).where(
                    CreditModel.environment_id == env, CreditModel.denomination == denom
                )
            )
            pool = await credits.ensure_pool(
                s,
                env,
                c.id,
                denom,
                now,
                hard_limit=model.hard_limit if model else None,
                rollover_policy=model.rollover_policy if model else None,
                rollover_cap_q=model.rollover_cap_q if model else None,
            )
        g = await credits.grant(
            s,
            env,
            pool,
            amount_q,
            gtype,
            now,
            idempotency_key=key,
            expires_at=expires,
            description=f"{gtype} top-up",
        )
        if g is None:  # lost a race with the same key
            raise Conflict(
                "a grant with this idempotencyKey already exists", field="idempotencyKey"
            )
        pool = await credits.lock_pool(s, env, pool.id)
        out = {"grant": grant_view(g, now), "pool": credit_pool_view(pool)}
        ctx.changed(s, env)
        ctx.announce(
            s,
            "credits.granted",
            p,
            {
                "customerReferenceId": ref,
                "poolId": pool.id,
                "grantId": g.id,
                "amount": int_to_qty(amount_q),
            },
        )
    return out

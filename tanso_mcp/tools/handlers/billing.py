"""Subscription, invoice and credit tools. Each handler calls the same
``services.billing_ops`` function as the REST endpoint; the previews of the guarded tools
run that function's service in a rolled-back transaction (``billing_ops.preview``)."""

from __future__ import annotations

from typing import Any

from ...context import AppContext
from ...principal import Principal
from ...services import billing_ops as ops

# --------------------------------------------------------------------------- reads


async def list_customer_invoices(app: AppContext, p: Principal, params: Any):
    items, _ = await ops.list_invoices(app, p, params.customerReferenceId)
    return items


async def get_credit_pools(app: AppContext, p: Principal, params: Any):
    items, _ = await ops.list_pools(app, p, params.customerReferenceId)
    return items


async def get_credit_balance(app: AppContext, p: Principal, params: Any):
    return await ops.get_pool(app, p, params.customerReferenceId, params.poolId)


# --------------------------------------------------------------------------- writes


async def create_subscription(app: AppContext, p: Principal, params: Any):
    out = await ops.create_subscription(
        app, p, customer_ref=params.customerReferenceId, plan_id=params.planId
    )
    if out.get("subscription") is None:  # Stripe Checkout: created once the customer pays
        return {"success": True, **{k: v for k, v in out.items() if v is not None}}
    status = out["subscription"]["status"]
    message = (
        "Subscription created and active."
        if status == "active"
        else "Subscription created; it becomes active once its first invoice is paid "
        "(markInvoicePaid)."
    )
    return {"success": True, "message": message, **out}


async def change_subscription_plan(app: AppContext, p: Principal, params: Any):
    return await ops.change_plan(
        app,
        p,
        params.subscriptionId,
        params.newPlanId,
        params.changeType,
        plan_field="newPlanId",
    )


async def change_subscription_plan_preview(app: AppContext, p: Principal, params: Any):
    return await ops.change_plan(
        app,
        p,
        params.subscriptionId,
        params.newPlanId,
        params.changeType,
        plan_field="newPlanId",
        dry_run=True,
    )


async def cancel_subscription(app: AppContext, p: Principal, params: Any):
    return await ops.cancel(app, p, params.subscriptionId, params.cancelMode)


async def cancel_subscription_preview(app: AppContext, p: Principal, params: Any):
    return await ops.cancel(app, p, params.subscriptionId, params.cancelMode, dry_run=True)


async def mark_invoice_paid(app: AppContext, p: Principal, params: Any):
    return await ops.mark_paid(app, p, params.invoiceId)


async def mark_invoice_paid_preview(app: AppContext, p: Principal, params: Any):
    return await ops.mark_paid(app, p, params.invoiceId, dry_run=True)

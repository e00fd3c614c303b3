"""The seed's "Onboard a new customer" and "Change or cancel a subscription" workflows
over MCP (in-memory client), with confirmAction previews that match what the real call
then does, and the credit/invoice read tools."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Invoice, ScheduledChange, Subscription
from tests.billing_helpers import Billing
from tests.factories import make_plan
from tests.mcp_helpers import call, fails, inmemory, ok

pytestmark = pytest.mark.anyio

ALLOC = '[{"denomination": "AI_TOKENS", "creditAmount": %s}]'


def _same_effects(preview: dict, result: dict) -> None:
    """A preview states exactly what the call then did (ids aside)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("id", "createdAt")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    keys = (
        "action",
        "statusBefore",
        "statusAfter",
        "effectiveAt",
        "invoicesCreated",
        "invoicesVoided",
        "invoicesPaid",
        "amountToPay",
        "amountCredited",
        "entitlementsGranted",
        "entitlementsRevoked",
        "creditsGranted",
        "creditsClawedBack",
        "scheduledChange",
    )
    for k in keys:
        assert strip(preview.get(k)) == strip(result.get(k)), k


async def _rows(ctx, model) -> int:
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model)))


async def test_onboard_a_new_customer(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await make_plan(ctx, env, key="pro_tier", price="99.00", credit_allocations=ALLOC % 500)
    async with inmemory(ctx, tenant.key("client")) as mcp:
        plans = (await ok(mcp, "listPlans"))["items"]
        plan_id = next(p["plan"]["id"] for p in plans if p["plan"]["key"] == "pro_tier")
        await ok(mcp, "createCustomer", {"customerReferenceId": "user_abc123", "email": "a@b.io"})
        out = await ok(
            mcp, "createSubscription", {"customerReferenceId": "user_abc123", "planId": plan_id}
        )
        assert out["success"] is True and "markInvoicePaid" in out["message"]
        assert out["subscription"]["status"] == "pending_payment"
        invoice = out["invoice"]
        assert (invoice["type"], invoice["status"], invoice["amount"]) == (
            "IN_ADVANCE_INITIAL",
            "DUE",
            99,
        )
        listed = (await ok(mcp, "listCustomerInvoices", {"customerReferenceId": "user_abc123"}))[
            "items"
        ]
        assert [i["id"] for i in listed] == [invoice["id"]]
        assert listed[0]["items"][0]["chargeAmount"] == 99
        # markInvoicePaid without confirmation: a preview, nothing written
        err = await fails(mcp, "markInvoicePaid", {"invoiceId": invoice["id"]})
        assert err["error"] == "confirmation_required"
        preview = err["preview"]
        assert preview["dryRun"] is True
        assert (preview["statusBefore"], preview["statusAfter"]) == ("pending_payment", "active")
        assert preview["entitlementsGranted"] == ["api_access"]
        assert preview["creditsGranted"] == {"AI_TOKENS": 500}
        customer = await ok(mcp, "getCustomer", {"customerReferenceId": "user_abc123"})
        assert customer["subscriptions"][0]["status"] == "pending_payment"
        assert "creditPools" not in customer
        paid = await ok(mcp, "markInvoicePaid", {"invoiceId": invoice["id"], "confirmAction": True})
        _same_effects(preview, paid)
        customer = await ok(mcp, "getCustomer", {"customerReferenceId": "user_abc123"})
        assert customer["subscriptions"][0]["status"] == "active"
        pools = (await ok(mcp, "getCreditPools", {"customerReferenceId": "user_abc123"}))["items"]
        assert [(p["denomination"], p["balance"]) for p in pools] == [("AI_TOKENS", 500)]
        pool = await ok(
            mcp,
            "getCreditBalance",
            {"customerReferenceId": "user_abc123", "poolId": pools[0]["id"]},
        )
        assert pool["balance"] == 500 and pool["totalGranted"] == 500
        again = await fails(
            mcp, "markInvoicePaid", {"invoiceId": invoice["id"], "confirmAction": True}
        )
        assert again["error"] == "invalid_request" and again["reason"] == "conflict"
        nope = await fails(
            mcp, "getCreditBalance", {"customerReferenceId": "user_abc123", "poolId": "nope"}
        )
        assert nope["error"] == "not_found" and nope["field"] == "poolId"
    await Billing(ctx, client, tenant).check()


async def test_change_or_cancel_a_subscription(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    basic = await make_plan(ctx, b.env, key="basic", price="49.00", credit_allocations=ALLOC % 100)
    pro = await make_plan(
        ctx,
        b.env,
        key="pro",
        price="99.00",
        features={"api_access": None, "exports": None},
        credit_allocations=ALLOC % 300,
    )
    await b.to("2026-04-01T00:00:00Z")
    async with inmemory(ctx, tenant.key("client")) as mcp:
        await ok(mcp, "createCustomer", {"customerReferenceId": "acme", "email": "a@acme.io"})
        created = await ok(
            mcp, "createSubscription", {"customerReferenceId": "acme", "planId": basic["plan_id"]}
        )
        await ok(
            mcp, "markInvoicePaid", {"invoiceId": created["invoice"]["id"], "confirmAction": True}
        )
        await b.to("2026-04-21T00:00:00Z")
        # 1. confirm the customer and their current subscription
        customer = await ok(mcp, "getCustomer", {"customerReferenceId": "acme"})
        (sub,) = customer["subscriptions"]
        assert sub["plan"]["key"] == "basic" and sub["status"] == "active"
        # 2. upgrade: preview first
        args = {"subscriptionId": sub["id"], "newPlanId": pro["plan_id"], "changeType": "UPGRADE"}
        invoices_before = await _rows(ctx, Invoice)
        err = await fails(mcp, "changeSubscriptionPlan", args)
        assert err["error"] == "confirmation_required"
        preview = err["preview"]
        (adj,) = preview["invoicesCreated"]
        assert (adj["type"], adj["amount"]) == ("ADJUSTMENT", 16.67)
        assert [i["chargeAmount"] for i in adj["items"]] == [-16.33, 33]
        assert preview["amountToPay"] == 16.67
        assert preview["entitlementsGranted"] == ["exports"]
        assert preview["creditsGranted"] == {"AI_TOKENS": 200}
        assert await _rows(ctx, Invoice) == invoices_before  # nothing written
        changed = await ok(mcp, "changeSubscriptionPlan", {**args, "confirmAction": True})
        _same_effects(preview, changed)
        assert changed["subscription"]["plan"]["key"] == "pro"
        # a downgrade is scheduled for the end of the period
        down = {
            "subscriptionId": sub["id"],
            "newPlanId": basic["plan_id"],
            "changeType": "DOWNGRADE",
            "confirmAction": True,
        }
        scheduled = await ok(mcp, "changeSubscriptionPlan", down)
        assert scheduled["scheduledChange"]["status"] == "PENDING"
        assert scheduled["effectiveAt"] == "2026-05-01T00:00:00Z"
        # 3. or cancel: IMMEDIATE preview states money and access consequences
        cancel = {"subscriptionId": sub["id"], "cancelMode": "IMMEDIATE"}
        err = await fails(mcp, "cancelSubscription", cancel)
        preview = err["preview"]
        assert preview["statusAfter"] == "cancelled"
        assert preview["entitlementsRevoked"] == ["api_access", "exports"]
        assert preview["creditsClawedBack"] == {"AI_TOKENS": 300}
        # the adjustment is unpaid (and voided): only basic's remaining third is refunded
        assert [i["type"] for i in preview["invoicesVoided"]] == ["ADJUSTMENT"]
        assert [(i["type"], i["amount"]) for i in preview["invoicesCreated"]] == [
            ("CREDIT", -16.33)
        ]
        assert preview["amountCredited"] == 16.33
        async with ctx.db.reader() as s:
            live = await s.scalar(
                select(Subscription.is_active).where(Subscription.id == sub["id"])
            )
            pending = await s.scalar(
                select(func.count())
                .select_from(ScheduledChange)
                .where(ScheduledChange.status == "PENDING")
            )
        assert live is True and pending == 1
        done = await ok(mcp, "cancelSubscription", {**cancel, "confirmAction": True})
        _same_effects(preview, done)
        assert done["cancelledScheduledChanges"] == 1
        customer = await ok(mcp, "getCustomer", {"customerReferenceId": "acme"})
        assert customer["subscriptions"][0]["status"] == "cancelled"
        # cancelling again is a clear error, also in the preview
        err = await fails(mcp, "cancelSubscription", cancel)
        assert err["error"] == "invalid_request" and "already cancelled" in err["message"]
    await b.check()


async def test_end_of_period_cancel_over_mcp_and_errors(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="basic", price="49.00", timing="IN_ARREARS")
    async with inmemory(ctx, tenant.key("client")) as mcp:
        await ok(mcp, "createCustomer", {"customerReferenceId": "c", "email": "c@c.io"})
        created = await ok(
            mcp, "createSubscription", {"customerReferenceId": "c", "planId": plan["plan_id"]}
        )
        sub_id = created["subscription"]["id"]
        assert created["subscription"]["status"] == "active"
        assert created["invoice"]["status"] == "PENDING"
        out = await ok(mcp, "cancelSubscription", {"subscriptionId": sub_id, "confirmAction": True})
        assert out["statusAfter"] == "cancel_scheduled" and out["invoicesVoided"] == []
        err = await fails(
            mcp,
            "changeSubscriptionPlan",
            {"subscriptionId": "nope", "newPlanId": plan["plan_id"], "changeType": "UPGRADE"},
        )
        assert err["error"] == "not_found" and err["field"] == "subscriptionId"
        err = await fails(
            mcp,
            "changeSubscriptionPlan",
            {"subscriptionId": sub_id, "newPlanId": "nope", "changeType": "UPGRADE"},
        )
        assert err["error"] == "not_found" and err["field"] == "newPlanId"
        err = await fails(
            mcp, "createSubscription", {"customerReferenceId": "ghost", "planId": plan["plan_id"]}
        )
        assert err["error"] == "not_found" and err["field"] == "customerReferenceId"
        err = await fails(mcp, "markInvoicePaid", {"invoiceId": "nope", "confirmAction": True})
        assert err["error"] == "not_found"
    async with inmemory(ctx, tenant.key("read")) as mcp:
        err = await fails(
            mcp, "createSubscription", {"customerReferenceId": "c", "planId": plan["plan_id"]}
        )
        assert err["error"] == "forbidden"
        invoices = (await ok(mcp, "listCustomerInvoices", {"customerReferenceId": "c"}))["items"]
        assert Decimal(str(invoices[0]["amount"])) == Decimal("49")
        is_error, body = await call(mcp, "listCustomerInvoices", {"customerReferenceId": "ghost"})
        assert is_error and body["error"] == "not_found"

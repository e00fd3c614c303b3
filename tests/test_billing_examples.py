"""The product's worked billing examples (proration, cancellation refund, grace period,
credits before overage, graduated and accumulated usage), reproduced to the cent through
the REST API and the test clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.billing_helpers import Billing, money
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

D = Decimal


async def _paid_in_advance_sub(b: Billing, plan_id: str, start_iso: str, ref: str = "acme"):
    await b.to(start_iso)
    await b.customer(ref)
    sub, inv = await b.subscribe(ref, plan_id)
    assert (sub["status"], inv["type"], inv["status"]) == (
        "pending_payment",
        "IN_ADVANCE_INITIAL",
        "DUE",
    )
    await b.pay(inv["id"])
    return sub


async def test_upgrade_proration_49_to_99_with_10_of_30_days_left(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    basic = await make_plan(ctx, b.env, key="basic", price="49.00", features={"reports": None})
    pro = await make_plan(
        ctx, b.env, key="pro", price="99.00", features={"reports": None, "exports": None}
    )
    sub = await _paid_in_advance_sub(b, basic["plan_id"], "2026-04-01T00:00:00Z")
    assert (sub["currentPeriodStart"], sub["currentPeriodEnd"]) == (
        "2026-04-01T00:00:00Z",
        "2026-05-01T00:00:00Z",
    )
    await b.to("2026-04-21T00:00:00Z")  # 10 of 30 days left
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"},
    )
    (adj,) = out["invoicesCreated"]
    assert adj["type"] == "ADJUSTMENT" and adj["status"] == "DUE"
    assert money(adj["amount"]) == D("16.67")
    assert [money(i["chargeAmount"]) for i in adj["items"]] == [D("-16.33"), D("33.00")]
    assert adj["dueDate"] == "2026-04-21T00:00:00Z"
    assert (adj["periodStart"], adj["periodEnd"]) == (
        "2026-04-21T00:00:00Z",
        "2026-05-01T00:00:00Z",
    )
    assert out["entitlementsGranted"] == ["exports"] and out["entitlementsRevoked"] == []
    assert out["subscription"]["planId"] == pro["plan_id"]
    assert out["subscription"]["status"] == "active"
    assert await b.entitlements(sub["id"]) == {"reports": True, "exports": True}
    # the stored invoice says the same
    stored = await b.data("GET", f"/billing/invoice/{adj['id']}")
    assert money(stored["amount"]) == D("16.67")
    await b.check()


async def test_immediate_cancel_refund_49_with_20_of_30_days_unused(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    basic = await make_plan(ctx, b.env, key="basic", price="49.00")
    sub = await _paid_in_advance_sub(b, basic["plan_id"], "2026-04-01T00:00:00Z")
    await b.to("2026-04-11T00:00:00Z")  # 20 of 30 days unused
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=IMMEDIATE")
    (credit,) = out["invoicesCreated"]
    assert (credit["type"], credit["status"], money(credit["amount"])) == (
        "CREDIT",
        "PAID",
        D("-32.67"),
    )
    assert [money(i["chargeAmount"]) for i in credit["items"]] == [D("-32.67")]
    assert out["statusAfter"] == "cancelled" and out["entitlementsRevoked"] == ["api_access"]
    after = await b.sub(sub["id"])
    assert after["status"] == "cancelled" and after["cancelMode"] == "IMMEDIATE"
    assert after["currentPeriodEnd"] == "2026-04-11T00:00:00Z"
    await b.check()


async def test_immediately_spelling_is_accepted(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    basic = await make_plan(ctx, b.env, key="basic", price="49.00")
    sub = await _paid_in_advance_sub(b, basic["plan_id"], "2026-04-01T00:00:00Z")
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=IMMEDIATELY")
    assert out["action"] == "CANCEL_IMMEDIATE"
    # 30 of 30 days unused: the whole price comes back
    assert money(out["invoicesCreated"][0]["amount"]) == D("-49.00")


async def test_grace_period_past_due_on_day_5_pauses_renewals_and_paying_restores(
    ctx, client, tenant
):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="basic",
        price="49.00",
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100}]',
    )
    sub = await _paid_in_advance_sub(b, plan["plan_id"], "2026-02-01T00:00:00Z")
    await b.to("2026-03-01T00:00:00Z")
    renewal = (await b.invoices("acme"))[-1]
    assert (renewal["type"], renewal["status"], renewal["dueDate"]) == (
        "REGULAR",
        "DUE",
        "2026-03-01T00:00:00Z",
    )
    await b.to("2026-03-04T23:59:59Z")
    assert (await b.invoices("acme"))[-1]["status"] == "DUE"
    assert (await b.sub(sub["id"]))["status"] == "active"
    assert await b.entitlements(sub["id"]) == {"api_access": True}
    await b.to("2026-03-05T00:00:00Z")
    assert (await b.invoices("acme"))[-1]["status"] == "PAST_DUE"
    assert (await b.sub(sub["id"]))["status"] == "past_due"
    assert await b.entitlements(sub["id"]) == {"api_access": False}
    # renewals are paused: nothing new on Apr 1
    await b.to("2026-04-02T00:00:00Z")
    invs = await b.invoices("acme")
    assert [i["type"] for i in invs] == ["IN_ADVANCE_INITIAL", "REGULAR"]
    # paying restores access; renewal resumes with the period that contains "now"
    out = await b.pay(renewal["id"])
    assert out["statusBefore"] == "past_due" and out["statusAfter"] == "active"
    assert out["entitlementsGranted"] == ["api_access"]
    assert await b.entitlements(sub["id"]) == {"api_access": True}
    await b.advance(seconds=1)
    invs = await b.invoices("acme")
    assert [(i["type"], i["status"], i["periodStart"][:10]) for i in invs] == [
        ("IN_ADVANCE_INITIAL", "PAID", "2026-02-01"),
        ("REGULAR", "PAID", "2026-03-01"),
        ("REGULAR", "DUE", "2026-04-01"),
    ]
    s = await b.sub(sub["id"])
    assert (s["currentPeriodStart"], s["currentPeriodEnd"]) == (
        "2026-04-01T00:00:00Z",
        "2026-05-01T00:00:00Z",
    )
    await b.check()


async def test_custom_grace_period_is_honoured(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="basic", price="10.00")
    await b.to("2026-02-01T00:00:00Z")
    await b.customer("acme")
    sub, inv = await b.subscribe("acme", plan["plan_id"], gracePeriod=0)
    assert sub["gracePeriodDays"] == 0
    await b.to("2026-02-01T23:59:59Z")
    assert (await b.data("GET", f"/billing/invoice/{inv['id']}"))["status"] == "DUE"
    await b.to("2026-02-02T00:00:00Z")
    assert (await b.data("GET", f"/billing/invoice/{inv['id']}"))["status"] == "PAST_DUE"
    # a pending subscription whose first invoice is past due is still pending payment
    assert (await b.sub(sub["id"]))["status"] == "pending_payment"

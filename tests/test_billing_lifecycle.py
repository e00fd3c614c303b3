"""Subscription lifecycle through REST: subscribe variants, bad input (nothing written),
mark-paid, plan changes (immediate, scheduled, undo, mixed timings, edge cases),
cancellation (end of period, immediate, undo), credits on each, month-end anchors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tanso_mcp.services import catalog
from tests.billing_helpers import Billing, money, summary
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

D = Decimal
ALLOC = '[{"denomination": "AI_TOKENS", "creditAmount": %s}]'


@pytest.fixture
async def b(ctx, client, tenant):
    return Billing(ctx, client, tenant)


async def _archive(ctx, env, plan_id):
    async with ctx.db.unit_of_work() as s:
        await catalog.update_plan(s, env, ctx.clocks.system_now(), plan_id, status="ARCHIVED")


# --------------------------------------------------------------------------- subscribe


async def test_in_arrears_is_active_at_once_with_a_pending_invoice(b, ctx):
    plan = await make_plan(
        ctx, b.env, key="metered", price="20.00", timing="IN_ARREARS", credit_allocations=ALLOC % 50
    )
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    assert sub["status"] == "active" and sub["isActive"] is True
    assert (inv["type"], inv["status"], money(inv["amount"])) == ("REGULAR", "PENDING", D("20.00"))
    assert inv["dueDate"] == sub["currentPeriodEnd"] == "2026-02-15T00:00:00Z"
    assert sub["currentPeriodStart"] == "2026-01-15T00:00:00Z"
    assert await b.entitlements(sub["id"]) == {"api_access": True}
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 50
    await b.check()


async def test_in_advance_paid_plan_waits_for_payment(b, ctx):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00", credit_allocations=ALLOC % 10)
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    assert sub["status"] == "pending_payment"
    assert await b.entitlements(sub["id"]) == {}
    assert await b.pools("c") == {}
    out = await b.pay(inv["id"])
    assert out["statusAfter"] == "active" and out["creditsGranted"] == {"AI_TOKENS": 10}
    assert await b.entitlements(sub["id"]) == {"api_access": True}
    await b.check()


async def test_free_plan_is_active_at_once(b, ctx):
    plan = await make_plan(ctx, b.env, key="free", price="0", credit_allocations=ALLOC % 5)
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    assert sub["status"] == "active"
    assert (inv["type"], inv["status"], money(inv["amount"]), inv["items"]) == (
        "IN_ADVANCE_INITIAL",
        "PAID",
        0,
        [],
    )
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 5


async def test_plan_key_and_several_subscriptions_per_customer(b, ctx):
    await make_plan(ctx, b.env, key="a", price="1.00", features={"fa": None})
    await make_plan(ctx, b.env, key="b", price="2.00", timing="IN_ARREARS", features={"fb": None})
    await b.customer("c")
    s1 = await b.data(
        "POST", "/subscriptions", 201, json={"customerReferenceId": "c", "planKey": "a"}
    )
    s2 = await b.data(
        "POST", "/subscriptions", 201, json={"externalClientCustomerId": "c", "planKey": "b"}
    )
    assert s1["subscription"]["plan"]["key"] == "a" and s2["subscription"]["plan"]["key"] == "b"
    cust = await b.data("GET", "/customers/c")
    assert sorted(x["status"] for x in cust["subscriptions"]) == ["active", "pending_payment"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"customerReferenceId": "nobody", "planKey": "pro"}, 404, "customerReferenceId"),
        ({"customerReferenceId": "c", "planId": "no-such-plan"}, 404, "planId"),
        ({"customerReferenceId": "c", "planKey": "nope"}, 404, "planKey"),
        ({"customerReferenceId": "c", "planKey": "draft"}, 400, "planKey"),
        ({"customerReferenceId": "c", "planKey": "old"}, 400, "planKey"),
        ({"customerReferenceId": "c"}, 400, "planId"),
        ({"planKey": "pro"}, 400, "customerReferenceId"),
        ({"customerReferenceId": "c", "planKey": "pro", "gracePeriod": -1}, 400, "gracePeriod"),
        ({"customerReferenceId": "c", "planKey": "pro", "gracePeriod": "abc"}, 400, "gracePeriod"),
        ({"customerReferenceId": "c", "planKey": "pro", "gracePeriod": 1.5}, 400, "gracePeriod"),
        ({"customerReferenceId": "c", "planKey": "pro", "planTypo": 1}, 400, "planTypo"),
        ({"customerReferenceId": ["c"], "planKey": "pro"}, 400, "customerReferenceId"),
    ],
)
async def test_bad_subscribe_input_names_the_field_and_writes_nothing(b, ctx, body, status, field):
    await make_plan(ctx, b.env, key="pro", price="9.00")
    await make_plan(ctx, b.env, key="draft", price="9.00", activate=False)
    old = await make_plan(ctx, b.env, key="old", price="9.00")
    await _archive(ctx, b.env, old["plan_id"])
    await b.customer("c")
    before = await b.counts()
    r = await b.req("POST", "/subscriptions", status, json=body)
    assert r["success"] is False and r["error"]["field"] == field, r
    assert await b.counts() == before


async def test_plan_id_and_key_must_agree(b, ctx):
    p = await make_plan(ctx, b.env, key="pro", price="9.00")
    await make_plan(ctx, b.env, key="other", price="9.00")
    await b.customer("c")
    r = await b.req(
        "POST",
        "/subscriptions",
        400,
        json={"customerReferenceId": "c", "planId": p["plan_id"], "planKey": "other"},
    )
    assert r["error"]["field"] == "planKey"


# --------------------------------------------------------------------------- mark paid


async def test_mark_paid_twice_void_and_unknown_are_clear_errors(b, ctx):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00")
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    await b.pay(inv["id"])
    before = await b.counts()
    r = await b.req("POST", f"/billing/invoices/{inv['id']}/mark-paid", 409)
    assert r["error"]["code"] == "conflict" and "already PAID" in r["error"]["message"]
    r = await b.req("POST", "/billing/invoices/nope/mark-paid", 404)
    assert r["error"]["field"] == "invoiceId"
    # a VOID invoice: cancel a second, unpaid subscription at once
    sub2, inv2 = await b.subscribe("c", plan["plan_id"])
    await b.data("POST", f"/subscriptions/cancellation/{sub2['id']}?cancelMode=IMMEDIATE")
    assert (await b.data("GET", f"/billing/invoice/{inv2['id']}"))["status"] == "VOID"
    before = await b.counts()
    r = await b.req("POST", f"/billing/invoices/{inv2['id']}/mark-paid", 400)
    assert "VOID" in r["error"]["message"] and r["error"]["field"] == "invoiceId"
    assert await b.counts() == before
    await b.check()


async def test_invoice_reads(b, ctx, tenant):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00")
    await b.customer("c")
    await b.customer("empty")
    _, inv = await b.subscribe("c", plan["plan_id"])
    page = await b.req("GET", "/billing/invoices/c?limit=1")
    assert page["pagination"] == {"limit": 1, "offset": 0, "total": 1, "hasMore": False}
    assert page["data"][0]["items"][0]["description"] == "Plan base price: Pro"
    assert (await b.req("GET", "/billing/invoices/empty"))["data"] == []
    assert (await b.req("GET", "/billing/invoices/nobody", 404))["error"]["code"] == "not_found"
    assert (await b.req("GET", "/billing/invoice/zzz", 404))["error"]["field"] == "invoiceId"
    r = await b.req("GET", "/billing/invoices/c?limit=0", 400)
    assert r["error"]["field"] == "limit"
    # read keys may read, not pay
    h = tenant.headers("read")
    r = await b.client.get(f"/api/v1/client/billing/invoice/{inv['id']}", headers=h)
    assert r.status_code == 200
    r = await b.client.post(f"/api/v1/client/billing/invoices/{inv['id']}/mark-paid", headers=h)
    assert r.status_code == 403
    # another environment never sees it
    live = tenant.headers("admin", "live")
    r = await b.client.get(f"/api/v1/client/billing/invoice/{inv['id']}", headers=live)
    assert r.status_code == 404


# --------------------------------------------------------------------------- plan change


async def _active(b: Billing, ctx, plan_id: str, ref: str = "c") -> dict:
    await b.customer(ref)
    sub, inv = await b.subscribe(ref, plan_id)
    if inv["status"] == "DUE":
        await b.pay(inv["id"])
    return sub


async def test_plan_change_edge_cases_are_refused_without_writing(b, ctx):
    basic = await make_plan(ctx, b.env, key="basic", price="10.00")
    draft = await make_plan(ctx, b.env, key="draft", price="20.00", activate=False)
    old = await make_plan(ctx, b.env, key="old", price="20.00")
    eur = await make_plan(ctx, b.env, key="eur", price="20.00", currency="EUR")
    await _archive(ctx, b.env, old["plan_id"])
    sub = await _active(b, ctx, basic["plan_id"])
    before = await b.counts()
    path = f"/subscriptions/{sub['id']}/plan-change"
    for body, status, field, text in [
        (
            {"changeToPlanId": basic["plan_id"], "changeType": "UPGRADE"},
            400,
            "changeToPlanId",
            "already",
        ),
        (
            {"changeToPlanId": draft["plan_id"], "changeType": "UPGRADE"},
            400,
            "changeToPlanId",
            "DRAFT",
        ),
        (
            {"changeToPlanId": old["plan_id"], "changeType": "DOWNGRADE"},
            400,
            "changeToPlanId",
            "ARCHIVED",
        ),
        (
            {"changeToPlanId": eur["plan_id"], "changeType": "UPGRADE"},
            400,
            "changeToPlanId",
            "currency",
        ),
        ({"changeToPlanId": "nope", "changeType": "UPGRADE"}, 404, "changeToPlanId", "not found"),
        ({"changeToPlanId": basic["plan_id"], "changeType": "SIDEWAYS"}, 400, "changeType", ""),
        ({"changeType": "UPGRADE"}, 400, "changeToPlanId", ""),
    ]:
        r = await b.req("POST", path, status, json=body)
        assert r["error"]["field"] == field and text in r["error"]["message"], (body, r)
    r = await b.req(
        "POST",
        "/subscriptions/nope/plan-change",
        404,
        json={"changeToPlanId": basic["plan_id"], "changeType": "UPGRADE"},
    )
    assert r["error"]["field"] == "subscriptionId"
    assert await b.counts() == before


async def test_plan_change_refused_while_pending_past_due_or_cancel_scheduled(b, ctx):
    basic = await make_plan(ctx, b.env, key="basic", price="10.00")
    pro = await make_plan(ctx, b.env, key="pro", price="20.00")
    await b.customer("c")
    sub, inv = await b.subscribe("c", basic["plan_id"])
    body = {"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"}
    r = await b.req("POST", f"/subscriptions/{sub['id']}/plan-change", 400, json=body)
    assert "first payment" in r["error"]["message"]
    await b.pay(inv["id"])
    await b.data("POST", f"/subscriptions/cancellation/{sub['id']}")
    r = await b.req("POST", f"/subscriptions/{sub['id']}/plan-change", 400, json=body)
    assert "scheduled cancellation" in r["error"]["message"]
    await b.data("DELETE", f"/subscriptions/cancellation/{sub['id']}/scheduled")
    await b.to("2026-02-20T00:00:00Z")  # renewal invoice unpaid since Feb 15 → past due Feb 19
    assert (await b.sub(sub["id"]))["status"] == "past_due"
    r = await b.req("POST", f"/subscriptions/{sub['id']}/plan-change", 400, json=body)
    assert "past due" in r["error"]["message"]


async def test_downgrade_is_scheduled_undoable_and_applied_at_period_end(b, ctx):
    pro = await make_plan(
        ctx,
        b.env,
        key="pro",
        price="99.00",
        features={"reports": None, "exports": None},
        credit_allocations=ALLOC % 300,
    )
    basic = await make_plan(
        ctx,
        b.env,
        key="basic",
        price="49.00",
        features={"reports": None},
        credit_allocations=ALLOC % 100,
    )
    sub = await _active(b, ctx, pro["plan_id"])
    body = {"changeToPlanId": basic["plan_id"], "changeType": "DOWNGRADE"}
    out = await b.data("POST", f"/subscriptions/{sub['id']}/plan-change", json=body)
    assert out["invoicesCreated"] == [] and out["scheduledChange"]["status"] == "PENDING"
    assert out["effectiveAt"] == "2026-02-15T00:00:00Z"
    assert out["subscription"]["planId"] == pro["plan_id"]
    assert out["subscription"]["scheduledChange"]["toPlanId"] == basic["plan_id"]
    # undo, then schedule again
    undo = await b.data("DELETE", f"/subscriptions/{sub['id']}/plan-change/scheduled")
    assert undo["cancelledScheduledChanges"] == 1
    assert "scheduledChange" not in (await b.sub(sub["id"]))
    again = await b.data("DELETE", f"/subscriptions/{sub['id']}/plan-change/scheduled")
    assert again["cancelledScheduledChanges"] == 0
    await b.data("POST", f"/subscriptions/{sub['id']}/plan-change", json=body)
    # the customer keeps pro until the period ends
    await b.to("2026-02-14T23:59:59Z")
    assert (await b.sub(sub["id"]))["planId"] == pro["plan_id"]
    assert await b.entitlements(sub["id"]) == {"reports": True, "exports": True}
    await b.to("2026-02-15T00:00:00Z")
    s = await b.sub(sub["id"])
    assert s["planId"] == basic["plan_id"] and "scheduledChange" not in s
    assert await b.entitlements(sub["id"]) == {"reports": True, "exports": False}
    renewal = (await b.invoices("c"))[-1]
    assert (renewal["type"], renewal["status"], money(renewal["amount"])) == (
        "REGULAR",
        "DUE",
        D("49.00"),
    )
    # credits are not clawed back; the rollover (NONE) expires last period's, then the
    # new period's grant comes with the payment
    pool = (await b.pools("c"))["AI_TOKENS"]
    assert money(pool["balance"]) == 0 and money(pool["totalExpired"]) == 300
    await b.pay(renewal["id"])
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 100
    await b.check()


async def test_upgrade_grants_only_the_credit_delta(b, ctx):
    basic = await make_plan(ctx, b.env, key="basic", price="49.00", credit_allocations=ALLOC % 100)
    pro = await make_plan(
        ctx,
        b.env,
        key="pro",
        price="99.00",
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 250},'
        '{"denomination": "IMAGES", "creditAmount": 7}]',
    )
    sub = await _active(b, ctx, basic["plan_id"])
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"},
    )
    assert out["creditsGranted"] == {"AI_TOKENS": 150, "IMAGES": 7}
    pools = await b.pools("c")
    assert (money(pools["AI_TOKENS"]["balance"]), money(pools["IMAGES"]["balance"])) == (250, 7)
    # paying the adjustment changes nothing more; the next renewal grants pro's amounts
    await b.pay(out["invoicesCreated"][0]["id"])
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 250
    await b.check()


async def test_upgrade_while_the_period_is_unpaid_grants_on_payment(b, ctx):
    basic = await make_plan(ctx, b.env, key="basic", price="49.00", credit_allocations=ALLOC % 100)
    pro = await make_plan(ctx, b.env, key="pro", price="99.00", credit_allocations=ALLOC % 250)
    sub = await _active(b, ctx, basic["plan_id"])
    await b.to("2026-02-15T00:00:00Z")
    renewal = (await b.invoices("c"))[-1]
    assert renewal["status"] == "DUE"
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"},
    )
    assert out["creditsGranted"] == {}
    await b.pay(renewal["id"])
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 250
    await b.check()


async def test_upgrade_to_a_cheaper_plan_becomes_a_paid_credit_adjustment(b, ctx):
    pro = await make_plan(ctx, b.env, key="pro", price="99.00")
    lite = await make_plan(ctx, b.env, key="lite", price="49.00")
    await b.to("2026-04-01T00:00:00Z")
    sub = await _active(b, ctx, pro["plan_id"])
    await b.to("2026-04-21T00:00:00Z")
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": lite["plan_id"], "changeType": "UPGRADE"},
    )
    (adj,) = out["invoicesCreated"]
    assert (adj["type"], adj["status"], money(adj["amount"])) == ("ADJUSTMENT", "PAID", D("-16.67"))
    assert out["amountCredited"] == 16.67


async def test_mixed_billing_timing_change_takes_effect_at_period_end(b, ctx):
    adv = await make_plan(ctx, b.env, key="adv", price="30.00")
    arr = await make_plan(ctx, b.env, key="arr", price="50.00", timing="IN_ARREARS")
    sub = await _active(b, ctx, adv["plan_id"])
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": arr["plan_id"], "changeType": "UPGRADE"},
    )
    assert out["scheduledChange"]["status"] == "PENDING" and out["invoicesCreated"] == []
    assert "end of the current period" in out["notes"][0]
    await b.to("2026-02-15T00:00:00Z")
    invs = await b.invoices("c")
    assert summary(invs) == [
        ("IN_ADVANCE_INITIAL", "PAID", D("30.00"), "2026-01-15"),
        ("REGULAR", "PENDING", D("50.00"), "2026-02-15"),
    ]
    assert invs[-1]["dueDate"] == "2026-03-15T00:00:00Z"
    assert (await b.sub(sub["id"]))["plan"]["billingTiming"] == "IN_ARREARS"
    # and back: arrears → advance, also at the period end
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": adv["plan_id"], "changeType": "DOWNGRADE"},
    )
    await b.to("2026-03-15T00:00:00Z")
    invs = await b.invoices("c")
    assert summary(invs)[1:] == [
        ("REGULAR", "DUE", D("50.00"), "2026-02-15"),
        ("REGULAR", "DUE", D("30.00"), "2026-03-15"),
    ]
    await b.check()


async def test_interval_change_takes_effect_at_period_end(b, ctx):
    monthly = await make_plan(ctx, b.env, key="m", price="10.00")
    yearly = await make_plan(ctx, b.env, key="y", price="100.00", interval=12)
    sub = await _active(b, ctx, monthly["plan_id"])
    await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": yearly["plan_id"], "changeType": "UPGRADE"},
    )
    await b.to("2026-02-15T00:00:00Z")
    s = await b.sub(sub["id"])
    assert (s["currentPeriodStart"], s["currentPeriodEnd"], s["intervalMonths"]) == (
        "2026-02-15T00:00:00Z",
        "2027-02-15T00:00:00Z",
        12,
    )
    assert money((await b.invoices("c"))[-1]["amount"]) == 100


async def test_in_arrears_upgrade_bills_each_plan_for_its_share(b, ctx):
    small = await make_plan(ctx, b.env, key="small", price="30.00", timing="IN_ARREARS")
    big = await make_plan(ctx, b.env, key="big", price="90.00", timing="IN_ARREARS")
    await b.to("2026-04-01T00:00:00Z")
    sub = await _active(b, ctx, small["plan_id"])
    await b.to("2026-04-21T00:00:00Z")  # 20 days used, 10 left
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": big["plan_id"], "changeType": "UPGRADE"},
    )
    assert out["invoicesCreated"] == []
    inv = (await b.invoices("c"))[0]
    assert inv["status"] == "PENDING"
    assert [money(i["chargeAmount"]) for i in inv["items"]] == [D("20.00"), D("30.00")]
    assert money(inv["amount"]) == D("50.00")
    await b.to("2026-05-01T00:00:00Z")
    invs = await b.invoices("c")
    assert summary(invs) == [
        ("REGULAR", "DUE", D("50.00"), "2026-04-01"),
        ("REGULAR", "PENDING", D("90.00"), "2026-05-01"),
    ]
    await b.check()


# --------------------------------------------------------------------------- cancellation


async def test_end_of_period_cancel_is_undoable_then_takes_effect(b, ctx):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00", credit_allocations=ALLOC % 100)
    sub = await _active(b, ctx, plan["plan_id"])
    top = await b.data(
        "POST",
        "/credits/c/grants",
        201,
        json={
            "denomination": "AI_TOKENS",
            "amount": 20,
            "grantType": "PURCHASED",
            "idempotencyKey": "t1",
        },
    )
    assert money(top["pool"]["balance"]) == 120
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}")
    assert out["statusAfter"] == "cancel_scheduled" and out["effectiveAt"] == "2026-02-15T00:00:00Z"
    s = await b.sub(sub["id"])
    assert (s["cancelMode"], s["cancelEffectiveAt"]) == ("END_OF_PERIOD", "2026-02-15T00:00:00Z")
    undo = await b.data("DELETE", f"/subscriptions/cancellation/{sub['id']}/scheduled")
    assert undo["statusAfter"] == "active"
    assert "cancelMode" not in await b.sub(sub["id"])
    await b.data("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=END_OF_PERIOD")
    await b.to("2026-02-14T23:00:00Z")
    assert await b.entitlements(sub["id"]) == {"api_access": True}
    await b.to("2026-02-16T00:00:00Z")
    s = await b.sub(sub["id"])
    assert s["status"] == "cancelled" and s["isActive"] is False
    assert [i["type"] for i in await b.invoices("c")] == ["IN_ADVANCE_INITIAL"]  # no renewal
    assert await b.entitlements(sub["id"]) == {"api_access": False}
    pool = (await b.pools("c"))["AI_TOKENS"]
    assert (money(pool["balance"]), money(pool["totalReversed"])) == (20, 100)  # purchased stays
    r = await b.req("DELETE", f"/subscriptions/cancellation/{sub['id']}/scheduled", 400)
    assert r["error"]["message"] == "Subscription is already cancelled"
    r = await b.req("POST", f"/subscriptions/cancellation/{sub['id']}", 400)
    assert r["error"]["message"] == "Subscription is already cancelled"
    await b.check()


async def test_immediate_cancel_claws_back_plan_credits_and_closes_the_period(b, ctx):
    plan = await make_plan(
        ctx, b.env, key="arr", price="40.00", timing="IN_ARREARS", credit_allocations=ALLOC % 100
    )
    sub = await _active(b, ctx, plan["plan_id"])
    for kind, amount in (("PURCHASED", 30), ("PROMOTIONAL", 5)):
        await b.data(
            "POST",
            "/credits/c/grants",
            201,
            json={
                "denomination": "AI_TOKENS",
                "amount": amount,
                "grantType": kind,
                "idempotencyKey": kind,
            },
        )
    await b.advance(days=3)
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=IMMEDIATE")
    assert out["creditsClawedBack"] == {"AI_TOKENS": 100}
    # the period in arrears closes now: its invoice bills the days used, DUE at once
    assert out["invoicesVoided"] == []
    assert [(i["type"], i["status"]) for i in out["invoicesClosed"]] == [("REGULAR", "DUE")]
    assert out["invoicesCreated"] == []  # nothing was prepaid in arrears
    assert money((await b.pools("c"))["AI_TOKENS"]["balance"]) == 35
    await b.check()


async def test_cancelling_an_unpaid_subscription_ends_it_without_refund(b, ctx):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00")
    await b.customer("c")
    sub, inv = await b.subscribe("c", plan["plan_id"])
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}")  # END_OF_PERIOD asked
    assert out["action"] == "CANCEL_IMMEDIATE" and out["invoicesCreated"] == []
    assert out["invoicesVoided"][0]["id"] == inv["id"]
    assert (await b.sub(sub["id"]))["status"] == "cancelled"


@pytest.mark.parametrize("pay_adjustment", [True, False])
async def test_immediate_cancel_after_an_upgrade_refunds_what_was_paid(b, ctx, pay_adjustment):
    basic = await make_plan(ctx, b.env, key="basic", price="49.00")
    pro = await make_plan(ctx, b.env, key="pro", price="99.00")
    await b.to("2026-04-01T00:00:00Z")
    sub = await _active(b, ctx, basic["plan_id"])
    await b.to("2026-04-11T00:00:00Z")
    out = await b.data(
        "POST",
        f"/subscriptions/{sub['id']}/plan-change",
        json={"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"},
    )
    adj = out["invoicesCreated"][0]
    assert money(adj["amount"]) == D("66.00") - D("32.67")
    if pay_adjustment:
        await b.pay(adj["id"])
    await b.to("2026-04-21T00:00:00Z")  # 10 of 30 days left
    out = await b.data("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=IMMEDIATE")
    refund = money(out["invoicesCreated"][0]["amount"])
    if pay_adjustment:  # the remaining third of pro was paid for
        assert refund == D("-33.00") and out["invoicesVoided"] == []
    else:  # only basic was paid; the (past due) adjustment is voided
        assert refund == D("-16.33")
        assert [i["type"] for i in out["invoicesVoided"]] == ["ADJUSTMENT"]
    await b.check()


async def test_cancel_bad_input(b, ctx):
    plan = await make_plan(ctx, b.env, key="pro", price="49.00")
    sub = await _active(b, ctx, plan["plan_id"])
    before = await b.counts()
    r = await b.req("POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=SOON", 400)
    assert r["error"]["field"] == "cancelMode"
    r = await b.req("POST", "/subscriptions/cancellation/nope", 404)
    assert r["error"]["field"] == "subscriptionId"
    r = await b.req("DELETE", "/subscriptions/cancellation/nope/scheduled", 404)
    assert await b.counts() == before


# --------------------------------------------------------------------------- anchors


async def test_month_end_anchor_clamps_and_returns(b, ctx):
    plan = await make_plan(ctx, b.env, key="free", price="0", timing="IN_ARREARS")
    await b.to("2027-01-31T12:00:00Z")
    sub = await _active(b, ctx, plan["plan_id"])
    assert sub["billingAnchorDay"] == 31
    ends = []
    for target in ("2027-03-01", "2027-04-01", "2027-05-01", "2027-06-01", "2028-03-01"):
        await b.to(f"{target}T00:00:00Z")
        s = await b.sub(sub["id"])
        ends.append((s["currentPeriodStart"][:10], s["currentPeriodEnd"][:10]))
    assert ends == [
        ("2027-02-28", "2027-03-31"),
        ("2027-03-31", "2027-04-30"),
        ("2027-04-30", "2027-05-31"),
        ("2027-05-31", "2027-06-30"),
        ("2028-02-29", "2028-03-31"),  # leap year
    ]
    invs = await b.invoices("c")
    assert all(i["status"] in ("PAID", "PENDING") for i in invs)  # $0 invoices settle
    assert [i["periodStart"][:10] for i in invs][:4] == [
        "2027-01-31",
        "2027-02-28",
        "2027-03-31",
        "2027-04-30",
    ]
    await b.check()


# --------------------------------------------------------------------------- credits API


async def test_top_up_and_credit_reads(b, ctx, tenant):
    await b.customer("c")
    await b.customer("d")
    body = {
        "denomination": "ai_tokens",
        "amount": "12.5",
        "grantType": "promotional",
        "expiresAt": "2026-03-01T00:00:00Z",
        "idempotencyKey": "promo-1",
    }
    out = await b.data("POST", "/credits/c/grants", 201, json=body)
    assert out["grant"]["grantType"] == "PROMOTIONAL" and money(out["pool"]["balance"]) == D("12.5")
    pool_id = out["pool"]["id"]
    before = await b.counts()
    r = await b.req("POST", "/credits/c/grants", 409, json=body)
    assert r["error"]["field"] == "idempotencyKey" and r["error"]["detail"]["grantId"]
    for patch, field in (
        ({"amount": 0}, "amount"),
        ({"amount": "1.00001"}, "amount"),
        ({"amount": "x"}, "amount"),
        ({"grantType": "PLAN_INCLUDED"}, "grantType"),
        ({"denomination": "no spaces"}, "denomination"),
        ({"expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"expiresAt": "soon"}, "expiresAt"),
        ({"idempotencyKey": ""}, "idempotencyKey"),
    ):
        r = await b.req(
            "POST",
            "/credits/c/grants",
            400,
            json=body | patch | {"idempotencyKey": patch.get("idempotencyKey", "k2")},
        )
        assert r["error"]["field"] == field, (patch, r)
    r = await b.req("POST", "/credits/nobody/grants", 404, json=body | {"idempotencyKey": "k3"})
    assert await b.counts() == before
    r = await b.client.post(
        "/api/v1/client/credits/c/grants",
        json=body | {"idempotencyKey": "k4"},
        headers=tenant.headers("read"),
    )
    assert r.status_code == 403
    # reads
    assert (await b.data("GET", f"/credits/c/pools/{pool_id}"))["denomination"] == "AI_TOKENS"
    assert (await b.req("GET", f"/credits/d/pools/{pool_id}", 404))["error"]["field"] == "poolId"
    txs = await b.req("GET", f"/credits/c/pools/{pool_id}/transactions")
    assert [(t["type"], money(t["amount"]), money(t["balanceAfter"])) for t in txs["data"]] == [
        ("GRANT", D("12.5"), D("12.5"))
    ]
    grants = await b.data("GET", f"/credits/c/pools/{pool_id}/grants")
    assert grants[0]["status"] == "ACTIVE" and grants[0]["expiresAt"] == "2026-03-01T00:00:00Z"
    await b.to("2026-03-02T00:00:00Z")  # the expiry job ran
    pool = await b.data("GET", f"/credits/c/pools/{pool_id}")
    assert (money(pool["balance"]), money(pool["totalExpired"])) == (0, D("12.5"))
    grants = await b.data("GET", f"/credits/c/pools/{pool_id}/grants")
    assert grants[0]["status"] in ("EXPIRED", "DEPLETED")
    await b.check()

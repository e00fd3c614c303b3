"""The Stripe Integration story end to end, against the running fake Stripe, over REST
and MCP: connect, set up, create a customer (it appears in Stripe), subscribe to a paid
in-advance plan (a checkout page, nothing created until Stripe confirms the payment),
upgrade (Stripe's proration invoice mirrored), renew (new period's credits with
rollover), cancel at period end, undo, cancel now — with duplicate and reordered
webhooks changing nothing and a forged signature refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import WebhookInbox
from tests.factories import make_plan
from tests.mcp_helpers import ok
from tests.stripe_helpers import StripeApp, stripe_app

pytestmark = pytest.mark.anyio

CHAT = {"pricing": {"model": "usage", "usage_unit_type": "messages", "price_per_unit": "0.02"}}


async def catalog(app: StripeApp) -> dict[str, str]:
    pro = await make_plan(
        app.ctx,
        app.env,
        key="pro",
        price="20.00",
        features={"ai_chat": CHAT, "export": None},
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100,'
        '"rolloverPolicy": "FULL"}]',
    )
    ent = await make_plan(
        app.ctx,
        app.env,
        key="enterprise",
        price="50.00",
        features={"ai_chat": CHAT, "export": None, "sso": None},
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 300,'
        '"rolloverPolicy": "FULL"}]',
    )
    return {"pro": pro["plan_id"], "enterprise": ent["plan_id"]}


async def inbox_count(app: StripeApp) -> int:
    async with app.ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(WebhookInbox)))


async def balance(app: StripeApp, ref: str) -> Decimal:
    pools = await app.data("GET", f"/credits/{ref}/pools")
    return sum((Decimal(str(p["balance"])) for p in pools), Decimal(0))


async def allowed(app: StripeApp, ref: str, feature: str) -> bool:
    return (await app.data("GET", f"/entitlements/{ref}/{feature}"))["allowed"]


async def test_the_stripe_story(db_url, stripe_fake, stripe_client):
    sc = stripe_client
    async with stripe_app(db_url, stripe_fake) as app:
        plans = await catalog(app)
        async with app.mcp() as mcp:
            assert (await ok(mcp, "getStripeIntegrationStatus"))["setupComplete"] is False
            await ok(
                mcp,
                "registerStripeApiKey",
                {"stripeApiKey": stripe_fake.api_key, "confirmAction": True},
            )
            setup = await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
            assert setup["modeChanged"] is True

            # --- a customer created here is created in Stripe, linked by reference
            cust = await ok(
                mcp,
                "createCustomer",
                {
                    "customerReferenceId": "user_456",
                    "email": "jane@example.com",
                    "firstName": "Jane",
                    "lastName": "Smith",
                },
            )
        cus_id = cust["customer"]["stripeCustomerId"]
        stripe_cus = await sc.v1.customers.retrieve_async(cus_id)
        assert stripe_cus.metadata["customerReferenceId"] == "user_456"
        assert stripe_cus.email == "jane@example.com" and stripe_cus.name == "Jane Smith"

        # --- paid in advance: a checkout page, nothing created yet
        out = await app.data(
            "POST",
            "/subscriptions",
            201,
            json={"customerReferenceId": "user_456", "planId": plans["pro"]},
        )
        assert out.get("subscription") is None and out.get("invoice") is None
        assert out["checkoutUrl"] and out["checkoutSessionId"].startswith("cs_")
        assert (await app.data("GET", "/customers/user_456"))["subscriptions"] == []
        assert await app.data("GET", "/billing/invoices/user_456") == []
        assert not await allowed(app, "user_456", "export")
        # asking again gives the same page (no second session)
        again = await app.data(
            "POST",
            "/subscriptions",
            201,
            json={"customerReferenceId": "user_456", "planId": plans["pro"]},
        )
        assert again["checkoutSessionId"] == out["checkoutSessionId"]

        # --- the customer pays: Stripe confirms through webhooks
        done = await stripe_fake.complete_checkout(out["checkoutSessionId"])
        await app.settle()
        subs = (await app.data("GET", "/customers/user_456"))["subscriptions"]
        assert len(subs) == 1 and subs[0]["status"] == "active"
        sub_id = subs[0]["id"]
        stripe_sub_id = done["subscription"]
        invoices = await app.data("GET", "/billing/invoices/user_456")
        assert [(i["type"], i["status"], Decimal(str(i["amount"]))) for i in invoices] == [
            ("IN_ADVANCE_INITIAL", "PAID", Decimal("20.00"))
        ]
        assert await allowed(app, "user_456", "export")
        assert await balance(app, "user_456") == 100
        # one active subscription per customer in this mode
        r = await app.req(
            "POST",
            "/api/v1/client/subscriptions",
            400,
            json={"customerReferenceId": "user_456", "planId": plans["enterprise"]},
        )
        assert sub_id in r["error"]["message"]

        # --- a redelivered event changes nothing
        before = await inbox_count(app)
        for event in await stripe_fake.events():
            await stripe_fake.redeliver(event["id"])
        await app.settle()
        assert await inbox_count(app) == before
        assert await balance(app, "user_456") == 100
        assert len(await app.data("GET", "/billing/invoices/user_456")) == 1

        # --- upgrade: Stripe swaps the price and prorates; the adjustment is mirrored
        up = await app.data(
            "POST",
            f"/subscriptions/{sub_id}/plan-change",
            json={"changeToPlanId": plans["enterprise"], "changeType": "UPGRADE"},
        )
        assert up["subscription"]["planId"] == plans["enterprise"]
        await app.settle()
        stripe_sub = await sc.v1.subscriptions.retrieve_async(stripe_sub_id)
        enterprise_price = (await app.data("GET", f"/subscriptions/{sub_id}"))["plan"]["id"]
        assert enterprise_price == plans["enterprise"]
        assert any(item.price.unit_amount == 5000 for item in stripe_sub["items"].data), (
            "Stripe bills the new plan"
        )
        invoices = await app.data("GET", "/billing/invoices/user_456")
        adjustments = [i for i in invoices if i["type"] == "ADJUSTMENT"]
        assert len(adjustments) == 1 and Decimal(str(adjustments[0]["amount"])) > 0
        assert await allowed(app, "user_456", "sso")
        assert await balance(app, "user_456") == 300  # the credit delta (+200)

        # --- renewal: Stripe bills the next period; its credits arrive with rollover
        period_before = (await app.data("GET", f"/subscriptions/{sub_id}"))["currentPeriodStart"]
        await stripe_fake.end_period(stripe_sub_id)
        await app.settle()
        renewed = await app.data("GET", f"/subscriptions/{sub_id}")
        assert renewed["currentPeriodStart"] > period_before
        assert renewed["status"] == "active"
        assert await balance(app, "user_456") == 600  # FULL rollover: 300 kept + 300 new
        regular = [
            i for i in await app.data("GET", "/billing/invoices/user_456") if i["type"] == "REGULAR"
        ]
        assert len(regular) == 1 and regular[0]["status"] == "PAID"

        # --- cancel at the end of the period, undo, cancel now
        c = await app.data("POST", f"/subscriptions/cancellation/{sub_id}?cancelMode=END_OF_PERIOD")
        assert c["subscription"]["status"] == "cancel_scheduled"
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.settle()
        await app.data("DELETE", f"/subscriptions/cancellation/{sub_id}/scheduled")
        await app.settle()
        assert not (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        assert (await app.data("GET", f"/subscriptions/{sub_id}"))["status"] == "active"
        # and once more (a new request, not a replay of the first one)
        await app.data("POST", f"/subscriptions/cancellation/{sub_id}?cancelMode=END_OF_PERIOD")
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.data("DELETE", f"/subscriptions/cancellation/{sub_id}/scheduled")
        assert not (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.settle()
        async with app.mcp() as mcp:
            gone = await ok(
                mcp,
                "cancelSubscription",
                {"subscriptionId": sub_id, "cancelMode": "IMMEDIATE", "confirmAction": True},
            )
        assert gone["subscription"]["status"] == "cancelled"
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).status == "canceled"
        await app.settle()
        assert not await allowed(app, "user_456", "export")
        assert await balance(app, "user_456") == 0  # plan credits clawed back

        # --- a stale "active" update delivered after the deletion never reactivates
        updates = await stripe_fake.events("customer.subscription.updated")
        for event in updates:
            await stripe_fake.redeliver(event["id"])
        await app.settle()
        assert (await app.data("GET", f"/subscriptions/{sub_id}"))["status"] == "cancelled"
        assert not await allowed(app, "user_456", "export")

        # --- a forged signature is refused and stores nothing
        before = await inbox_count(app)
        r = await app.http.post(
            f"/api/v1/webhooks/stripe/{app.env}",
            content=b'{"id": "evt_forged", "type": "invoice.paid", "data": {"object": {}}}',
            headers={"Stripe-Signature": "t=1,v1=deadbeef"},
        )
        assert r.status_code == 400
        r = await app.http.post(f"/api/v1/webhooks/stripe/{app.env}", content=b"{}")
        assert r.status_code == 400
        assert await inbox_count(app) == before

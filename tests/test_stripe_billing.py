"""Stripe Integration mode beyond the main story, against the fake Stripe: direct
subscriptions (in arrears, free), invoices paid out of band and their payment pages,
payment failures (also stale ones, delivered after the payment), a downgrade applied to
Stripe at the period boundary, and outages: a Stripe error applies nothing, ingest never
calls Stripe, a webhook whose processing failed is processed again from the inbox."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from tanso_mcp.db.models import PendingSubscription, WebhookInbox
from tanso_mcp.services.jobs import run_due
from tests.factories import make_plan
from tests.mcp_helpers import call, ok
from tests.stripe_helpers import StripeApp, stripe_app

pytestmark = pytest.mark.anyio


async def _ready(app: StripeApp) -> dict[str, str]:
    await app.connect()
    team = await make_plan(
        app.ctx,
        app.env,
        key="team",
        price="10.00",
        timing="IN_ARREARS",
        features={"seats": None},
        credit_allocations='[{"denomination": "SEAT_CREDITS", "creditAmount": 5}]',
    )
    free = await make_plan(app.ctx, app.env, key="free", price="0", features={"seats": None})
    return {"team": team["plan_id"], "free": free["plan_id"]}


async def _subscribe(app: StripeApp, ref: str, plan_id: str) -> dict:
    await app.data("POST", "/customers", 201, json={"customerReferenceId": ref})
    out = await app.data(
        "POST", "/subscriptions", 201, json={"customerReferenceId": ref, "planId": plan_id}
    )
    await app.settle()
    return out["subscription"]


async def _bill_period(app: StripeApp, stripe_sub_id: str, ref: str) -> tuple[str, str]:
    """The reporter sends the period's base-fee unit, then Stripe ends the period: its
    renewal invoice (left open: send_invoice) bills the base fee. Answers the engine's
    and Stripe's ids of that invoice."""
    await run_due(app.ctx, app.env)
    stripe_inv = await app.fake.end_period(stripe_sub_id, pay=False)
    await app.settle()
    invoices = await app.data("GET", f"/billing/invoices/{ref}")
    due = [i for i in invoices if i["status"] == "DUE"]
    assert [Decimal(str(i["amount"])) for i in due] == [Decimal("10.00")], invoices
    return due[0]["id"], stripe_inv["id"]


async def _allowed(app: StripeApp, ref: str) -> bool:
    return (await app.data("GET", f"/entitlements/{ref}/seats"))["allowed"]


async def _stripe_invoice(app: StripeApp, ref: str) -> tuple[dict, str]:
    invoices = await app.data("GET", f"/billing/invoices/{ref}")
    assert len(invoices) == 1, invoices
    detail = await app.data("GET", f"/billing/invoice/{invoices[0]['id']}")
    return detail, detail["providerInvoiceId"] if "providerInvoiceId" in detail else ""


async def test_direct_subscriptions_mark_paid_and_stale_failures(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        plans = await _ready(app)
        # in arrears: created in Stripe directly, active at once, Stripe invoices
        sub = await _subscribe(app, "a1", plans["team"])
        assert sub["status"] == "active"
        assert await _allowed(app, "a1")
        pools = await app.data("GET", "/credits/a1/pools")
        assert [(p["denomination"], Decimal(str(p["balance"]))) for p in pools] == [
            ("SEAT_CREDITS", Decimal(5))
        ]
        stripe_subs = (await stripe_client.v1.subscriptions.list_async()).data
        assert len(stripe_subs) == 1 and stripe_subs[0].collection_method == "send_invoice"
        # the base fee is billed in arrears: nothing at the start, the fee at the end
        invoices = await app.data("GET", "/billing/invoices/a1")
        assert [(i["status"], Decimal(str(i["amount"]))) for i in invoices] == [
            ("PAID", Decimal(0))
        ]
        invoice_id, stripe_inv = await _bill_period(app, stripe_subs[0].id, "a1")
        page = await app.data("POST", f"/billing/invoices/{invoice_id}/stripe/checkout")
        assert page["url"].startswith("https://")
        by_sub = await app.data("POST", f"/billing/subscriptions/{sub['id']}/stripe/checkout")
        assert by_sub["url"] == page["url"]

        # a payment fails, then the customer pays out of band; Stripe's events arrive
        # in the wrong order (the failure last): the paying customer keeps access
        await stripe_fake.hold_webhooks()
        await stripe_fake.fail_payment(stripe_inv)
        async with app.mcp() as mcp:
            err, preview = await call(mcp, "markInvoicePaid", {"invoiceId": invoice_id})
            assert err and preview["error"] == "confirmation_required"
            assert "Stripe collects payments" in str(preview["preview"])
            # a preview never calls Stripe
            assert (await stripe_client.v1.invoices.retrieve_async(stripe_inv)).status == "open"
            paid = await ok(
                mcp, "markInvoicePaid", {"invoiceId": invoice_id, "confirmAction": True}
            )
        assert paid["invoice"]["status"] == "PAID"
        got = await stripe_client.v1.invoices.retrieve_async(stripe_inv)
        assert got.status == "paid"
        held = await stripe_fake.held_events()
        order = [e["id"] for e in held if e["type"] != "invoice.payment_failed"] + [
            e["id"] for e in held if e["type"] == "invoice.payment_failed"
        ]
        await stripe_fake.release_webhooks(order)
        await stripe_fake.deliver_webhooks_now()
        await app.settle()
        assert (await app.data("GET", f"/subscriptions/{sub['id']}"))["status"] == "active"
        assert (await app.data("GET", f"/billing/invoice/{invoice_id}"))["status"] == "PAID"
        assert await _allowed(app, "a1")
        page = await app.data("POST", f"/billing/invoices/{invoice_id}/stripe/checkout")
        assert page["url"] == ""

        # a failure that is current makes the subscription past due (access revoked);
        # paying restores it
        sub2 = await _subscribe(app, "a2", plans["team"])
        stripe_sub2 = next(
            s
            for s in (await stripe_client.v1.subscriptions.list_async()).data
            if s.id != stripe_subs[0].id
        )
        inv2, stripe_inv2 = await _bill_period(app, stripe_sub2.id, "a2")
        await stripe_fake.fail_payment(stripe_inv2)
        await app.settle()
        assert (await app.data("GET", f"/subscriptions/{sub2['id']}"))["status"] == "past_due"
        assert not await _allowed(app, "a2")
        await app.data("POST", f"/billing/invoices/{inv2}/mark-paid")
        await app.settle()
        assert (await app.data("GET", f"/subscriptions/{sub2['id']}"))["status"] == "active"
        assert await _allowed(app, "a2")

        # a free plan: direct, active, nothing to pay
        sub3 = await _subscribe(app, "f1", plans["free"])
        assert sub3["status"] == "active" and await _allowed(app, "f1")

        # over MCP, a paid in-advance plan answers a checkout page (nothing created yet)
        pro = await make_plan(app.ctx, app.env, key="pro", price="25.00", features={"seats": None})
        async with app.mcp() as mcp:
            await ok(
                mcp, "createCustomer", {"customerReferenceId": "m1", "email": "m1@example.com"}
            )
            out = await ok(
                mcp, "createSubscription", {"customerReferenceId": "m1", "planId": pro["plan_id"]}
            )
        assert out["checkoutUrl"] and out["checkoutSessionId"] and not out.get("subscription")
        assert (await app.data("GET", "/customers/m1"))["subscriptions"] == []


async def test_outages_lose_nothing(db_url, stripe_fake, stripe_client):
    async with stripe_app(db_url, stripe_fake, stripe_retry_seconds=0.001) as app:
        plans = await _ready(app)
        await _subscribe(app, "o0", plans["team"])  # the plan is in Stripe already
        await app.data("POST", "/customers", 201, json={"customerReferenceId": "o1"})
        with stripe_fake.outage():
            # a Stripe error answers 502 and applies nothing
            r = await app.req(
                "POST",
                "/api/v1/client/subscriptions",
                502,
                json={"customerReferenceId": "o1", "planId": plans["team"]},
            )
            assert r["error"]["code"] == "stripe_api_error"
            assert (await app.data("GET", "/customers/o1"))["subscriptions"] == []
            # a customer is created here all the same; Stripe gets it later
            c = await app.data(
                "POST", "/customers", 201, json={"customerReferenceId": "o2", "email": "o2@x.io"}
            )
            assert c.get("stripeCustomerId") is None
            # ingest never calls Stripe
            r = await app.req(
                "POST",
                "/api/v1/client/events",
                201,
                json={
                    "eventName": "seat_used",
                    "customerReferenceId": "o1",
                    "featureKey": "seats",
                    "usageUnits": 1,
                    "eventIdempotencyKey": "e1",
                },
            )
        async with app.ctx.db.reader() as s:
            failed = (await s.scalars(select(PendingSubscription))).all()
        assert sorted(p.status for p in failed) == ["COMPLETED", "FAILED"]
        sub = await _subscribe_existing(app, "o1", plans["team"])
        assert sub["status"] == "active"
        sub_o2 = await _subscribe_existing(app, "o2", plans["team"])
        assert sub_o2["status"] == "active"
        o2 = await app.data("GET", "/customers/o2")
        assert o2["stripeCustomerId"].startswith("cus_")
        await app.data("PATCH", "/customers/o2", json={"email": "new@x.io"})
        got = await stripe_client.v1.customers.retrieve_async(o2["stripeCustomerId"])
        assert (got.email, got.metadata["customerReferenceId"]) == ("new@x.io", "o2")

        # a webhook received while Stripe cannot be read back is kept and processed later
        stripe_sub = next(
            x
            for x in (await stripe_client.v1.subscriptions.list_async()).data
            if x.metadata["customerReferenceId"] == "o1"
        )
        _, renewal = await _bill_period(app, stripe_sub.id, "o1")
        await stripe_fake.hold_webhooks()
        await stripe_fake.fail_payment(renewal)
        failure = next(
            e for e in await stripe_fake.held_events() if e["type"] == "invoice.payment_failed"
        )
        signed = (await stripe_fake.signed_event(failure["id"]))[0]
        with stripe_fake.outage():
            r = await app.http.post(
                f"/api/v1/webhooks/stripe/{app.env}",
                content=signed["payload"].encode(),
                headers=signed["headers"],
            )
            assert r.status_code == 200
            await app.settle()
            async with app.ctx.db.reader() as s:
                row = (
                    await s.scalars(
                        select(WebhookInbox).where(WebhookInbox.event_id == failure["id"])
                    )
                ).one()
            assert row.processed_at is None and row.last_error and row.attempts == 1
            assert (await app.data("GET", f"/subscriptions/{sub['id']}"))["status"] == "active"
        await run_due(app.ctx, app.env)  # the job runner's pass retries it
        async with app.ctx.db.reader() as s:
            row = (
                await s.scalars(select(WebhookInbox).where(WebhookInbox.event_id == failure["id"]))
            ).one()
        assert row.processed_at is not None
        assert (await app.data("GET", f"/subscriptions/{sub['id']}"))["status"] == "past_due"


async def _subscribe_existing(app: StripeApp, ref: str, plan_id: str) -> dict:
    out = await app.data(
        "POST", "/subscriptions", 201, json={"customerReferenceId": ref, "planId": plan_id}
    )
    await app.settle()
    return out["subscription"]


async def test_a_downgrade_reaches_stripe_at_the_period_boundary(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        plans = await _ready(app)
        small = await make_plan(
            app.ctx,
            app.env,
            key="small",
            price="4.00",
            timing="IN_ARREARS",
            features={"basic": None},
        )
        sub = await _subscribe(app, "d1", plans["team"])
        out = await app.data(
            "POST",
            f"/subscriptions/{sub['id']}/plan-change",
            json={"changeToPlanId": small["plan_id"], "changeType": "DOWNGRADE"},
        )
        assert out["scheduledChange"]["status"] == "PENDING"
        stripe_sub = (await stripe_client.v1.subscriptions.list_async()).data[0]
        assert stripe_sub["items"].data[0].price.unit_amount == 1000  # nothing changed yet
        await app.data("POST", "/test-clock/advance", json={"days": 32})
        await app.settle()
        stripe_sub = await stripe_client.v1.subscriptions.retrieve_async(stripe_sub.id)
        assert stripe_sub["items"].data[0].price.unit_amount == 400
        now = await app.data("GET", f"/subscriptions/{sub['id']}")
        assert now["planId"] == small["plan_id"]
        assert not await _allowed(app, "d1")  # the small plan has no seats feature


async def test_unknown_event_types_are_acknowledged_and_ignored(db_url, stripe_fake):
    import asyncio
    import json
    import time

    import stripe

    from tanso_mcp.services import stripe_secrets

    async with stripe_app(db_url, stripe_fake) as app:
        await app.connect()
        async with app.ctx.db.reader() as s:
            secret = (await stripe_secrets.decrypt_all(app.ctx, s, app.env))[
                stripe_secrets.WEBHOOK_SECRET
            ]
        body = json.dumps({"id": "evt_x", "type": "charge.refunded", "data": {"object": {}}})
        header = stripe.WebhookSignature.generate_signature_header(body, secret, int(time.time()))
        # redeliveries, even at the same moment, are recorded once
        answers = await asyncio.gather(
            *(
                app.http.post(
                    f"/api/v1/webhooks/stripe/{app.env}",
                    content=body.encode(),
                    headers={"Stripe-Signature": header},
                )
                for _ in range(6)
            )
        )
        assert [r.status_code for r in answers] == [200] * 6
        await app.settle()
        async with app.ctx.db.reader() as s:
            rows = (await s.scalars(select(WebhookInbox))).all()
        assert [(r.event_id, r.event_type, r.processed_at is not None) for r in rows] == [
            ("evt_x", "charge.refunded", True)
        ]
        # another environment's URL does not accept this environment's signature
        other = app.tenant.env_ids["live"]
        r = await app.http.post(
            f"/api/v1/webhooks/stripe/{other}",
            content=body.encode(),
            headers={"Stripe-Signature": header},
        )
        assert r.status_code == 400


async def test_stripe_ends_a_subscription_at_the_period_end(db_url, stripe_fake, stripe_client):
    async with stripe_app(db_url, stripe_fake) as app:
        plans = await _ready(app)
        sub = await _subscribe(app, "e1", plans["team"])
        out = await app.data(
            "POST", f"/subscriptions/cancellation/{sub['id']}?cancelMode=END_OF_PERIOD"
        )
        assert out["subscription"]["status"] == "cancel_scheduled"
        assert await _allowed(app, "e1")  # access until Stripe ends it
        stripe_sub = (await stripe_client.v1.subscriptions.list_async()).data[0]
        await stripe_fake.end_period(stripe_sub.id)
        await app.settle()
        assert (
            await stripe_client.v1.subscriptions.retrieve_async(stripe_sub.id)
        ).status == "canceled"
        assert (await app.data("GET", f"/subscriptions/{sub['id']}"))["status"] == "cancelled"
        assert not await _allowed(app, "e1")
        pools = await app.data("GET", "/credits/e1/pools")
        assert [Decimal(str(p["balance"])) for p in pools] == [Decimal(0)]

"""The whole Stripe Integration story, end to end, against the running fake Stripe.

One test, run once per transport: every step the MCP tools and the REST API both offer
(status, connect, setup, customers, subscribe, events, plan change, cancel, usage
reconciliation) goes through that transport; the steps only one of them offers go
through it either way (discover and import: MCP; undoing a cancellation: REST; Stripe's
webhooks: the fake delivering them over HTTP). The app runs under uvicorn with the real
Stripe provider; every assertion reads real state — the database, the fake's objects,
the answers.

The story: an account that already holds products, customers and subscriptions is
connected (status → key → setup), discovered and imported (twice, no duplicates); a new
customer appears in Stripe; a paid in-advance plan goes through Checkout (nothing exists
until Stripe confirms; a processing failure is retried from the inbox); usage draws
credits first and the overage reaches the Stripe meter exactly once, also after a crash
between send and record; an upgrade mirrors Stripe's proration invoice; a renewal whose
webhooks arrive in reverse (a stale payment failure after the payment) grants the new
period's credits with rollover; a Stripe outage during the next renewal loses nothing
and the job runner catches up by itself; cancel at period end, undo, cancel now; late
and repeated webhooks change nothing; a forged signature is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select

from tanso_mcp.db.models import (
    Customer,
    EnvironmentSecret,
    Feature,
    Invoice,
    PendingSubscription,
    Plan,
    PlanFeature,
    Subscription,
    WebhookInbox,
)
from tanso_mcp.db.scale import QTY_SCALE
from tanso_mcp.db.stripe_usage_models import MeterReport, StripeImportJob
from tanso_mcp.services import stripe_usage, stripe_webhooks
from tanso_mcp.services.jobs import run_due
from tanso_mcp.web.app import _jobs_loop
from tests.factories import make_plan
from tests.mcp_helpers import call, fails, ok
from tests.stripe_helpers import ShiftedClock, StripeApp, stripe_app

pytestmark = pytest.mark.anyio

D = Decimal
SIX_EVENTS = {
    "checkout.session.completed",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}
# usage priced per message, drawn from the plan's AI_TOKENS credits first
CHAT = {
    "pricing": {"model": "usage", "usage_unit_type": "messages", "price_per_unit": "0.02"},
    "credits": {"denomination": "AI_TOKENS"},
}


# --------------------------------------------------------------------------- transports


class Transport:
    """The story's steps that both transports offer; each answers the `data` the
    caller would read, or raises AssertionError on an unexpected failure."""

    name: str

    def __init__(self, app: StripeApp, mcp: Any):
        self.app, self.mcp = app, mcp


class Rest(Transport):
    name = "rest"

    async def status(self) -> dict:
        return (await self.app.req("GET", "/api/v1/tanso/stripe/status"))["data"]

    async def connect(self, key: str) -> str:
        body = {"stripeSecretKey": key}
        r = await self.app.req("POST", "/api/v1/tanso/stripe/connect", json=body)
        return r["data"]["maskedApiKey"]

    async def setup(self) -> dict:
        return (await self.app.req("POST", "/api/v1/tanso/stripe/setup"))["data"]

    async def create_customer(self, **body: str) -> dict:
        return await self.app.data("POST", "/customers", 201, json=body)

    async def subscribe(self, ref: str, plan_id: str) -> dict:
        body = {"customerReferenceId": ref, "planId": plan_id}
        return await self.app.data("POST", "/subscriptions", 201, json=body)

    async def ingest(self, key: str, ref: str, feature: str, units: int) -> dict:
        body = {
            "eventIdempotencyKey": key,
            "eventName": "chat_completion",
            "customerReferenceId": ref,
            "featureKey": feature,
            "usageUnits": units,
        }
        return await self.app.data("POST", "/events", 201, json=body, headers=self.app.h("client"))

    async def upgrade(self, sub_id: str, plan_id: str) -> dict:
        body = {"changeToPlanId": plan_id, "changeType": "UPGRADE"}
        return await self.app.data("POST", f"/subscriptions/{sub_id}/plan-change", json=body)

    async def cancel(self, sub_id: str, mode: str) -> dict:
        return await self.app.data(
            "POST", f"/subscriptions/cancellation/{sub_id}?cancelMode={mode}"
        )

    async def cancel_refused(self, sub_id: str, mode: str) -> str:
        r = await self.app.req(
            "POST", f"/api/v1/client/subscriptions/cancellation/{sub_id}?cancelMode={mode}", 502
        )
        return r["error"]["code"]

    async def reconciliation(self) -> list[dict]:
        return (await self.app.data("GET", "/stripe/usage-reconciliation"))["items"]


class Mcp(Transport):
    name = "mcp"

    async def status(self) -> dict:
        return await ok(self.mcp, "getStripeIntegrationStatus")

    async def connect(self, key: str) -> str:
        """The key as the answer shows it (masked)."""
        args = {"stripeApiKey": key}
        before = await t_status(self)
        refused = await fails(self.mcp, "registerStripeApiKey", args)  # guarded: a preview
        assert refused["error"] == "confirmation_required", refused
        assert await t_status(self) == before  # the preview stored nothing
        answer = await ok(self.mcp, "registerStripeApiKey", args | {"confirmAction": True})
        assert key not in answer["message"], answer
        return answer["maskedApiKey"]

    async def setup(self) -> dict:
        return await ok(self.mcp, "setupStripeIntegration", {"confirmAction": True})

    async def create_customer(self, **body: str) -> dict:
        return (await ok(self.mcp, "createCustomer", body))["customer"]

    async def subscribe(self, ref: str, plan_id: str) -> dict:
        return await ok(
            self.mcp, "createSubscription", {"customerReferenceId": ref, "planId": plan_id}
        )

    async def ingest(self, key: str, ref: str, feature: str, units: int) -> dict:
        at = await self.app.ctx.clocks.now(self.app.env)
        args = {
            "eventIdempotencyKey": key,
            "eventName": "chat_completion",
            "occurredAt": at.isoformat(),
            "customerReferenceId": ref,
            "featureKey": feature,
            "usageUnits": str(units),
        }
        return await ok(self.mcp, "ingestEvent", args)

    async def upgrade(self, sub_id: str, plan_id: str) -> dict:
        args = {"subscriptionId": sub_id, "newPlanId": plan_id, "changeType": "UPGRADE"}
        events = len(await self.app.fake.events())
        preview = await fails(self.mcp, "changeSubscriptionPlan", args)
        assert preview["error"] == "confirmation_required", preview
        assert len(await self.app.fake.events()) == events  # a preview calls nothing in Stripe
        return await ok(self.mcp, "changeSubscriptionPlan", args | {"confirmAction": True})

    async def cancel(self, sub_id: str, mode: str) -> dict:
        args = {"subscriptionId": sub_id, "cancelMode": mode, "confirmAction": True}
        return await ok(self.mcp, "cancelSubscription", args)

    async def cancel_refused(self, sub_id: str, mode: str) -> str:
        args = {"subscriptionId": sub_id, "cancelMode": mode, "confirmAction": True}
        return (await fails(self.mcp, "cancelSubscription", args))["error"]

    async def reconciliation(self) -> list[dict]:
        return (await ok(self.mcp, "getStripeUsageReconciliation"))["items"]


# --------------------------------------------------------------------------- reading state


async def t_status(t: Transport) -> dict:
    return await ok(t.mcp, "getStripeIntegrationStatus")


async def count(app: StripeApp, model: Any, *where: Any) -> int:
    async with app.ctx.db.reader() as s:
        q = select(func.count()).select_from(model).where(model.environment_id == app.env, *where)
        return int(await s.scalar(q))


async def rows(app: StripeApp, model: Any, *where: Any, order: Any = None) -> list[Any]:
    async with app.ctx.db.reader() as s:
        q = select(model).where(model.environment_id == app.env, *where)
        return list((await s.scalars(q.order_by(order) if order is not None else q)).all())


async def catalog_counts(app: StripeApp) -> tuple[int, ...]:
    return tuple(
        [await count(app, m) for m in (Plan, Feature, Customer, Subscription)]
        + [await count(app, Subscription, Subscription.is_active.is_(True))]
    )


async def balance(app: StripeApp, ref: str) -> Decimal:
    pools = await app.data("GET", f"/credits/{ref}/pools")
    return sum((D(str(p["balance"])) for p in pools), D(0))


async def allowed(app: StripeApp, ref: str, feature: str) -> bool:
    return (await app.data("GET", f"/entitlements/{ref}/{feature}"))["allowed"]


async def subscription(app: StripeApp, sub_id: str) -> Subscription:
    [sub] = await rows(app, Subscription, Subscription.id == sub_id)
    return sub


async def invoices(app: StripeApp, sub_id: str) -> list[Invoice]:
    return await rows(app, Invoice, Invoice.subscription_id == sub_id, order=Invoice.created_at)


async def meter_summary(sc: stripe.StripeClient, meter_id: str, customer_id: str) -> Decimal:
    """What Stripe's own API says the meter holds for the customer (all time)."""
    end = (int(datetime.now(UTC).timestamp()) // 60 + 10) * 60
    page = await sc.v1.billing.meters.event_summaries.list_async(
        meter_id, params={"customer": customer_id, "start_time": end - 86400, "end_time": end}
    )
    return sum((D(str(x.aggregated_value)) for x in page.data), D(0))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def seed_account(sc: stripe.StripeClient) -> dict[str, str]:
    """What the Stripe account holds before tanso-mcp is connected: a product with a base
    and a metered price, another with a base price, a customer with a live subscription
    and one whose subscription ended."""
    v1 = sc.v1
    meter = await v1.billing.meters.create_async(
        params={
            "display_name": "Summaries",
            "event_name": "summaries",
            "default_aggregation": {"formula": "sum"},
        }
    )
    pro = await v1.products.create_async(params={"name": "Pro Monthly"})
    month = {"interval": "month"}
    pro_price = await v1.prices.create_async(
        params={"product": pro.id, "currency": "usd", "unit_amount": 4900, "recurring": month}
    )
    await v1.prices.create_async(
        params={
            "product": pro.id,
            "currency": "usd",
            "unit_amount_decimal": "2",
            "recurring": month | {"usage_type": "metered", "meter": meter.id},
        }
    )
    starter = await v1.products.create_async(params={"name": "Starter"})
    starter_price = await v1.prices.create_async(
        params={"product": starter.id, "currency": "usd", "unit_amount": 900, "recurring": month}
    )
    alice = await v1.customers.create_async(
        params={
            "email": "alice@example.com",
            "name": "Alice Liddell",
            "metadata": {"customerReferenceId": "user_alice"},
        }
    )
    bob = await v1.customers.create_async(params={"email": "bob@example.com"})
    terms = {"collection_method": "send_invoice", "days_until_due": 30}
    live = await v1.subscriptions.create_async(
        params={"customer": alice.id, "items": [{"price": pro_price.id}]} | terms
    )
    ended = await v1.subscriptions.create_async(
        params={"customer": bob.id, "items": [{"price": starter_price.id}]} | terms
    )
    await v1.subscriptions.cancel_async(ended.id)
    return {"meter": meter.id, "pro": pro.id, "alice": alice.id, "bob": bob.id, "live": live.id}


async def wait_for_import(mcp: Any, job_id: str) -> dict:
    for _ in range(600):
        job = await ok(mcp, "getStripeImportStatus", {"jobId": job_id})
        if job["status"] not in ("PENDING", "RUNNING"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {job_id} did not finish: {job}")


async def post_webhook(app: StripeApp, signed: dict) -> int:
    r = await app.http.post(
        f"/api/v1/webhooks/stripe/{app.env}",
        content=signed["payload"].encode(),
        headers=signed["headers"],
    )
    return r.status_code


class Crash(BaseException):
    """The process dies: nothing after the send runs."""


# --------------------------------------------------------------------------- the story


@pytest.mark.parametrize("transport", [Mcp, Rest], ids=["mcp", "rest"])
async def test_the_whole_stripe_story(db_url, stripe_fake, stripe_client, monkeypatch, transport):
    sc = stripe_client
    clock = ShiftedClock()
    seeded = await seed_account(sc)
    async with (
        stripe_app(
            db_url,
            stripe_fake,
            clock=clock,
            stripe_retry_seconds=1,
            jobs_interval_seconds=0.1,
            mcp_tool_groups=["stripe"],
        ) as app,
        app.mcp() as mcp,
    ):
        t: Transport = transport(app, mcp)
        other: Transport = (Rest if transport is Mcp else Mcp)(app, mcp)
        env = app.env
        pro = await make_plan(
            app.ctx,
            env,
            key="pro",
            price="20.00",
            features={"ai_chat": json.dumps(CHAT), "export": None},
            credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100,'
            '"rolloverPolicy": "FULL"}]',
        )
        ent = await make_plan(
            app.ctx,
            env,
            key="enterprise",
            price="50.00",
            features={"ai_chat": json.dumps(CHAT), "export": None, "sso": None},
            credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 300,'
            '"rolloverPolicy": "FULL"}]',
        )

        # ---- 1. status: nothing set up; Stripe cannot be read yet
        status = await t.status()
        assert (status["hasApiKey"], status["hasWebhook"], status["setupComplete"]) == (
            False,
            False,
            False,
        ), status
        assert status["stripeMode"] != "STRIPE_DRIVEN" and status.get("maskedApiKey") is None
        assert (await fails(mcp, "discoverStripeData"))["error"] == "precondition_failed"

        # ---- 2. register the key: stored encrypted, shown masked
        connected = await t.connect(stripe_fake.api_key)
        masked = "sk_test_…" + stripe_fake.api_key[-4:]
        assert connected == masked, connected
        [secret] = await rows(app, EnvironmentSecret, EnvironmentSecret.name == "stripe.api_key")
        assert stripe_fake.api_key not in secret.ciphertext and secret.masked == masked
        status = await other.status()
        assert (status["hasApiKey"], status["maskedApiKey"], status["setupComplete"]) == (
            True,
            masked,
            False,
        )

        # ---- 3. setup: a webhook endpoint in Stripe, STRIPE_DRIVEN; repeating is harmless
        setup = await t.setup()
        assert (setup["webhookCreated"], setup["modeChanged"], setup["stripeMode"]) == (
            True,
            True,
            "STRIPE_DRIVEN",
        ), setup
        again = await other.setup()
        assert (again["webhookCreated"], again["modeChanged"]) == (False, False)
        [endpoint] = (await sc.v1.webhook_endpoints.list_async()).data
        assert endpoint.url == f"{app.url}/api/v1/webhooks/stripe/{env}"
        assert set(endpoint.enabled_events) == SIX_EVENTS
        status = await t.status()
        assert status["setupComplete"] and status["hasWebhook"] and status["stripeEnabled"]
        assert status["maskedWebhookSecret"].startswith("whsec_…")
        assert status["stripeMode"] == "STRIPE_DRIVEN"
        theirs = await other.status()
        shared = set(status) & set(theirs)
        assert len(shared) >= 8 and {k: status[k] for k in shared} == {k: theirs[k] for k in shared}

        # ---- 4. discover what the account already holds: nothing linked yet
        found = await ok(mcp, "discoverStripeData")
        assert found["warnings"] == []
        assert {p["name"] for p in found["products"]} == {"Pro Monthly", "Starter"}
        assert {c["id"] for c in found["customers"]} == {seeded["alice"], seeded["bob"]}
        assert len(found["subscriptions"]) == 2
        kinds = ("products", "customers", "subscriptions")
        assert not any(x["alreadyMapped"] for k in kinds for x in found[k])
        before = await catalog_counts(app)
        assert before == (2, 3, 0, 0, 0)  # our own catalog only

        # ---- 5. import: a job answering at once, followed with getStripeImportStatus
        preview = await fails(mcp, "importStripeData")
        assert preview["error"] == "confirmation_required"
        started = await ok(mcp, "importStripeData", {"confirmAction": True})
        assert started["status"] in ("PENDING", "RUNNING") and started["warnings"] == []
        job = await wait_for_import(mcp, started["jobId"])
        assert job["status"] == "COMPLETED", job
        assert (job["totalItems"], job["processedItems"], job["failedItems"]) == (6, 6, 0), job
        [job_row] = await rows(app, StripeImportJob, StripeImportJob.id == started["jobId"])
        assert job_row.status == "COMPLETED" and job_row.finished_at is not None
        imported = await catalog_counts(app)
        # +2 plans, +2 features (Pro's meter, Starter's access), +2 customers, +1 live
        # subscription (the ended one is not mirrored)
        assert imported == (4, 5, 2, 1, 1), imported
        assert {f.key for f in await rows(app, Feature, Feature.source != "API")} == {
            "pro_monthly_usage",
            "starter_access",
        }
        [pro_monthly] = await rows(app, Plan, Plan.provider_product_id == seeded["pro"])
        assert (pro_monthly.key, pro_monthly.price_minor) == ("pro_monthly", 4900)
        [alice] = await rows(app, Customer, Customer.provider_customer_id == seeded["alice"])
        assert alice.reference_id == "user_alice"
        [alice_sub] = await rows(
            app, Subscription, Subscription.provider_subscription_id == seeded["live"]
        )
        assert alice_sub.is_active and alice_sub.customer_id == alice.id
        assert alice_sub.plan_id == pro_monthly.id
        assert await allowed(app, "user_alice", "pro_monthly_usage")
        [usage] = await rows(app, Feature, Feature.provider_meter_id == seeded["meter"])
        assert await count(app, PlanFeature, PlanFeature.feature_id == usage.id) == 1

        # ---- 6. import again: nothing duplicated; discover now shows everything linked
        again = await wait_for_import(
            mcp, (await ok(mcp, "importStripeData", {"confirmAction": True}))["jobId"]
        )
        assert (again["status"], again["processedItems"], again["failedItems"]) == (
            "COMPLETED",
            6,
            0,
        )
        assert await catalog_counts(app) == imported
        found = await ok(mcp, "discoverStripeData")
        assert all(x["alreadyMapped"] for k in ("products", "customers") for x in found[k])
        mapped = {x["id"]: x["alreadyMapped"] for x in found["subscriptions"]}
        assert mapped.pop(seeded["live"]) is True
        assert list(mapped.values()) == [False]  # the ended one is not mirrored

        # ---- 7. a new customer appears in Stripe, linked by its reference
        cust = await t.create_customer(
            customerReferenceId="user_456",
            email="jane@example.com",
            firstName="Jane",
            lastName="Smith",
        )
        cus_id = cust["stripeCustomerId"]
        stripe_cus = await sc.v1.customers.retrieve_async(cus_id)
        assert stripe_cus.metadata["customerReferenceId"] == "user_456"
        assert (stripe_cus.email, stripe_cus.name) == ("jane@example.com", "Jane Smith")
        [jane] = await rows(app, Customer, Customer.reference_id == "user_456")
        assert jane.provider_customer_id == cus_id

        # ---- 8. paid in advance: a checkout page, nothing created until Stripe confirms
        out = await t.subscribe("user_456", pro["plan_id"])
        assert out.get("subscription") is None and out.get("invoice") is None, out
        session = await sc.v1.checkout.sessions.retrieve_async(out["checkoutSessionId"])
        assert out["checkoutUrl"] == session.url and session.status == "open"
        assert (session.mode, session.customer) == ("subscription", cus_id)
        # the customer comes back to pages that exist (the defaults: no URLs were set)
        for back, title in ((session.success_url, "received"), (session.cancel_url, "cancelled")):
            assert back.startswith(app.url + "/checkout/"), back
            page = await app.http.get(back.replace("{CHECKOUT_SESSION_ID}", session.id))
            assert page.status_code == 200 and f"Payment {title}" in page.text
        assert await count(app, Subscription, Subscription.customer_id == jane.id) == 0
        assert await count(app, Invoice, Invoice.customer_id == jane.id) == 0
        assert (await sc.v1.subscriptions.list_async(params={"customer": cus_id})).data == []
        assert not await allowed(app, "user_456", "export")
        # asking again gives the same page, not a second session
        assert (await t.subscribe("user_456", pro["plan_id"]))["checkoutSessionId"] == session.id

        # ---- 9. the customer pays; the first processing of Stripe's events fails (a
        # bug), so nothing appears — and nothing is dropped: the inbox retries
        real_materialise = stripe_webhooks.materialise

        async def broken(*a: Any, **k: Any) -> Any:
            raise RuntimeError("mirror bug")

        monkeypatch.setattr(stripe_webhooks, "materialise", broken)
        done = await stripe_fake.complete_checkout(session.id)
        await app.settle()
        pending = await rows(app, WebhookInbox, WebhookInbox.processed_at.is_(None))
        assert pending and all("mirror bug" in r.last_error for r in pending)
        assert {r.event_type for r in pending} >= {"checkout.session.completed", "invoice.paid"}
        assert await count(app, Subscription, Subscription.customer_id == jane.id) == 0
        monkeypatch.setattr(stripe_webhooks, "materialise", real_materialise)
        clock.advance(2)  # the retry's back-off runs out
        await run_due(app.ctx, env)  # the job runner's pass
        assert await count(app, WebhookInbox, WebhookInbox.processed_at.is_(None)) == 0
        [sub] = await rows(app, Subscription, Subscription.customer_id == jane.id)
        sub_id, stripe_sub_id = sub.id, done["subscription"]
        assert sub.is_active and sub.provider_subscription_id == stripe_sub_id
        assert sub.plan_id == pro["plan_id"]
        [first] = await invoices(app, sub_id)
        stripe_first = await sc.v1.invoices.retrieve_async(first.provider_invoice_id)
        assert (first.type, first.status, first.amount_minor) == (
            "IN_ADVANCE_INITIAL",
            "PAID",
            2000,
        )
        assert stripe_first.status == "paid" and stripe_first.amount_paid == 2000
        assert await allowed(app, "user_456", "export") and await allowed(
            app, "user_456", "ai_chat"
        )
        assert await balance(app, "user_456") == 100
        [checkout] = await rows(
            app, PendingSubscription, PendingSubscription.customer_id == jane.id
        )
        assert (checkout.status, checkout.subscription_id) == ("COMPLETED", sub_id)
        # one active subscription per customer in this mode
        r = await app.req(
            "POST",
            "/api/v1/client/subscriptions",
            400,
            json={"customerReferenceId": "user_456", "planId": ent["plan_id"]},
        )
        assert sub_id in r["error"]["message"]
        # every event delivered again: one effect each
        received = await rows(app, WebhookInbox)
        for row in received:
            await stripe_fake.redeliver(row.event_id)
        await app.settle()
        assert await count(app, WebhookInbox) == len(received) >= 4
        assert await balance(app, "user_456") == 100 and len(await invoices(app, sub_id)) == 1

        # ---- 10. usage: credits first, then the overage reaches the meter exactly once
        [chat] = await rows(app, Feature, Feature.key == "ai_chat")
        meter = chat.provider_meter_id
        assert meter, "the plan's metered feature has a Stripe meter"
        events_before = len(await stripe_fake.events())
        await t.ingest("e1", "user_456", "ai_chat", 60)
        await t.ingest("e2", "user_456", "ai_chat", 70)  # 40 from credits, 30 overage
        assert await balance(app, "user_456") == 0
        assert len(await stripe_fake.events()) == events_before  # ingest never calls Stripe
        assert await meter_summary(sc, meter, cus_id) == 0
        await run_due(app.ctx, env)
        assert await meter_summary(sc, meter, cus_id) == 30
        await run_due(app.ctx, env)
        assert await meter_summary(sc, meter, cus_id) == 30
        # the process dies between Stripe's answer and recording it
        await t.ingest("e3", "user_456", "ai_chat", 25)

        async def crash(*a: Any, **k: Any) -> None:
            raise Crash

        monkeypatch.setattr(stripe_usage, "record_outcomes", crash)
        dying = asyncio.create_task(stripe_usage.report_overage(app.ctx, env, clock.now()))
        with pytest.raises(Crash):
            await dying
        monkeypatch.undo()
        assert await meter_summary(sc, meter, cus_id) == 55
        assert [r.status for r in await rows(app, MeterReport, order=MeterReport.from_q)] == [
            "sent",
            "pending",
        ]
        await run_due(app.ctx, env)  # within the claim's lease: left to its claimer
        assert (await rows(app, MeterReport, order=MeterReport.from_q))[-1].status == "pending"
        assert await meter_summary(sc, meter, cus_id) == 55
        clock.advance(61)  # the dead claimer's lease runs out
        await run_due(app.ctx, env)
        reports = await rows(app, MeterReport, order=MeterReport.from_q)
        assert [(r.status, r.from_q, r.to_q) for r in reports] == [
            ("sent", 0, 30 * QTY_SCALE),
            ("sent", 30 * QTY_SCALE, 55 * QTY_SCALE),
        ]
        assert await meter_summary(sc, meter, cus_id) == 55  # not 80
        sent = [e for e in await stripe_fake.meter_events() if e["identifier"].startswith("tanso_")]
        assert sorted(e["identifier"] for e in sent) == sorted(r.identifier for r in reports)
        [item] = [i for i in await t.reconciliation() if i["featureKey"] == "ai_chat"]
        assert [D(str(item[k])) for k in ("unitsAccepted", "unitsCoveredByCredits")] == [155, 100]
        assert [D(str(item[k])) for k in ("unitsBillable", "unitsReported", "unitsPending")] == [
            55,
            55,
            0,
        ]

        # ---- 11. upgrade: Stripe swaps the price and prorates; its invoice is mirrored
        up = await t.upgrade(sub_id, ent["plan_id"])
        assert up["subscription"]["planId"] == ent["plan_id"], up
        await app.settle()
        stripe_sub = await sc.v1.subscriptions.retrieve_async(stripe_sub_id)
        assert 5000 in [i.price.unit_amount for i in stripe_sub["items"].data]
        assert 2000 not in [i.price.unit_amount for i in stripe_sub["items"].data]
        [adjustment] = [i for i in await invoices(app, sub_id) if i.type == "ADJUSTMENT"]
        stripe_adj = await sc.v1.invoices.retrieve_async(adjustment.provider_invoice_id)
        assert stripe_adj.billing_reason == "subscription_update"
        assert adjustment.amount_minor == stripe_adj.total > 0
        assert (await subscription(app, sub_id)).plan_id == ent["plan_id"]
        assert await allowed(app, "user_456", "sso")
        assert await balance(app, "user_456") == 200  # the credit difference (300 - 100)

        # ---- 12. renewal, its webhooks delivered in reverse: a stale payment failure
        # after the payment never locks the paying customer out
        period_before = (await subscription(app, sub_id)).current_period_start
        await stripe_fake.hold_webhooks()
        renewal = await stripe_fake.end_period(stripe_sub_id, fail=True)
        assert renewal["status"] == "open"
        paid = await stripe_fake.pay_invoice_hosted(renewal["id"])
        assert paid["status"] == "paid"
        held = await stripe_fake.held_events()
        types = [e["type"] for e in held]
        assert types.index("invoice.payment_failed") < types.index("invoice.paid")
        await stripe_fake.release_webhooks([e["id"] for e in reversed(held)])
        await stripe_fake.deliver_webhooks_now()
        await app.settle()
        arrived = [
            r.event_type
            for r in await rows(
                app,
                WebhookInbox,
                WebhookInbox.event_id.in_([e["id"] for e in held]),
                order=WebhookInbox.received_at,
            )
        ]
        assert arrived.index("invoice.paid") < arrived.index("invoice.payment_failed"), arrived
        renewed = await subscription(app, sub_id)
        assert renewed.is_active and renewed.current_period_start > period_before
        assert await allowed(app, "user_456", "sso") and await allowed(app, "user_456", "export")
        customer_view = await app.data("GET", "/customers/user_456")
        assert [s["status"] for s in customer_view["subscriptions"]] == ["active"]
        [regular] = [i for i in await invoices(app, sub_id) if i.type == "REGULAR"]
        assert regular.provider_invoice_id == renewal["id"]
        assert (regular.status, regular.amount_minor) == ("PAID", paid["total"])
        # Stripe billed the reported overage (55 × $0.02) with the new period's price
        assert paid["total"] == 5000 + 110
        assert await balance(app, "user_456") == 500  # FULL rollover: 200 kept + 300 new
        # the fake renews at once, dating the new period a month on (it has no test
        # clocks): the environment's test clock moves into that period, as time would
        env_now = await app.ctx.clocks.now(env)
        gap = int((renewed.current_period_start - env_now).total_seconds()) + 2
        await app.req("POST", "/api/v1/client/test-clock/advance", json={"seconds": gap})
        assert await balance(app, "user_456") == 500

        # ---- 13. a Stripe outage during the next renewal: nothing is lost, and the job
        # runner catches up by itself once Stripe is back
        period_before = renewed.current_period_start
        await stripe_fake.hold_webhooks()
        second = await stripe_fake.end_period(stripe_sub_id)
        assert second["status"] == "paid"
        # the exact bytes Stripe sends, signed, for the events the endpoint listens to
        signed = [
            one
            for e in await stripe_fake.held_events()
            for one in await stripe_fake.signed_event(e["id"])
        ]
        assert {"invoice.created", "invoice.paid"} <= {
            json.loads(x["payload"])["type"] for x in signed
        }
        jobs = asyncio.create_task(_jobs_loop(app.ctx))
        try:
            with stripe_fake.outage():
                for one in signed:
                    assert await post_webhook(app, one) == 200  # recorded, answered at once
                await app.settle()

                async def all_failed_once() -> bool:
                    waiting = await rows(app, WebhookInbox, WebhookInbox.processed_at.is_(None))
                    return len(waiting) == len(signed) and all(
                        r.attempts >= 1 and "reached" in r.last_error for r in waiting
                    )

                await eventually(all_failed_once, "renewal events attempted while Stripe is down")
                # usage keeps flowing: 500 credits, then 20 units of overage for the meter
                await t.ingest("e4", "user_456", "ai_chat", 520)
                assert await balance(app, "user_456") == 0

                async def report_failed() -> bool:
                    last = (await rows(app, MeterReport, order=MeterReport.created_at))[-1]
                    return last.status == "unknown" and last.attempts >= 1

                await eventually(report_failed, "the meter report tried while Stripe is down")
                item = next(i for i in await t.reconciliation() if i["featureKey"] == "ai_chat")
                assert D(str(item["unitsPending"])) == 20
                # a change Stripe must make is refused whole
                assert await t.cancel_refused(sub_id, "END_OF_PERIOD") == "stripe_api_error"
                unchanged = await subscription(app, sub_id)
                assert unchanged.cancel_mode is None and unchanged.is_active
                assert unchanged.current_period_start == period_before
                # a new customer is recorded here; Stripe gets it before its first
                # subscription
                late = await t.create_customer(customerReferenceId="user_789", email="l@x.io")
                assert late.get("stripeCustomerId") is None, late
                clock.advance(10)  # the outage lasts a while; back-offs run out meanwhile
            await stripe_fake.deliver_webhooks_now()

            async def caught_up() -> bool:
                inbox = await count(app, WebhookInbox, WebhookInbox.processed_at.is_(None))
                reports = await rows(app, MeterReport, MeterReport.status != "sent")
                return inbox == 0 and not reports

            await eventually(caught_up, "caught up after the outage")
        finally:
            jobs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
        assert await meter_summary(sc, meter, cus_id) == 75
        retried = await rows(
            app,
            WebhookInbox,
            WebhookInbox.event_id.in_([json.loads(x["payload"])["id"] for x in signed]),
        )
        assert len(retried) == len(signed) and all(
            r.attempts >= 2 and r.last_error is None for r in retried
        )
        last = (await rows(app, MeterReport, order=MeterReport.created_at))[-1]
        assert (last.status, last.to_q - last.from_q) == ("sent", 20 * QTY_SCALE)
        assert last.attempts >= 2
        # nothing of the refused cancellation reached Stripe
        assert not (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        after = await subscription(app, sub_id)
        assert after.is_active and after.current_period_start > period_before
        assert await balance(app, "user_456") == 300  # nothing to roll over, 300 new
        regular = [i for i in await invoices(app, sub_id) if i.type == "REGULAR"]
        assert [(i.provider_invoice_id, i.status) for i in regular][-1] == (second["id"], "PAID")
        assert len(regular) == 2
        page = await t.subscribe("user_789", pro["plan_id"])
        [late] = await rows(app, Customer, Customer.reference_id == "user_789")
        assert late.provider_customer_id, "synced before its first subscription"
        stripe_late = await sc.v1.customers.retrieve_async(late.provider_customer_id)
        assert stripe_late.metadata["customerReferenceId"] == "user_789"
        late_session = await sc.v1.checkout.sessions.retrieve_async(page["checkoutSessionId"])
        assert late_session.customer == late.provider_customer_id

        # ---- 14. cancel at the end of the period, undo, cancel now
        c = await t.cancel(sub_id, "END_OF_PERIOD")
        assert c["subscription"]["status"] == "cancel_scheduled", c
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.settle()
        assert (await subscription(app, sub_id)).cancel_mode == "END_OF_PERIOD"
        await app.data("DELETE", f"/subscriptions/cancellation/{sub_id}/scheduled")
        await app.settle()
        assert not (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        restored = await subscription(app, sub_id)
        assert restored.cancel_mode is None and restored.is_active
        # and once more: a new request each time, not a replay of the first ones
        await t.cancel(sub_id, "END_OF_PERIOD")
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.data("DELETE", f"/subscriptions/cancellation/{sub_id}/scheduled")
        assert not (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).cancel_at_period_end
        await app.settle()
        assert (await subscription(app, sub_id)).cancel_mode is None
        gone = await t.cancel(sub_id, "IMMEDIATE")
        assert gone["subscription"]["status"] == "cancelled", gone
        assert (await sc.v1.subscriptions.retrieve_async(stripe_sub_id)).status == "canceled"
        await app.settle()
        ended = await subscription(app, sub_id)
        assert not ended.is_active and ended.ended_at is not None
        assert not await allowed(app, "user_456", "export")
        assert not await allowed(app, "user_456", "sso")
        assert await balance(app, "user_456") == 0  # plan credits clawed back

        # ---- 15. late and repeated webhooks change nothing: a redelivered "active"
        # update after the deletion never reactivates
        received = {r.event_id: r.event_type for r in await rows(app, WebhookInbox)}
        inbox_before = len(received)
        assert "customer.subscription.deleted" in received.values()
        updates = [
            e
            for e in await stripe_fake.events("customer.subscription.updated")
            if e["object_id"] == stripe_sub_id
        ]
        snapshots = [
            json.loads((await stripe_fake.signed_event(e["id"]))[0]["payload"])["data"]["object"]
            for e in updates
        ]
        assert "active" in {x["status"] for x in snapshots}  # stale: Stripe says canceled
        assert all(e["id"] in received for e in updates)  # each was delivered before
        for event_id in [e["id"] for e in updates] + [
            i for i, kind in received.items() if kind == "invoice.paid"
        ]:
            [delivery] = await stripe_fake.redeliver(event_id)
            assert delivery["status"] == 200, delivery  # received and acknowledged again
        await app.settle()
        assert await count(app, WebhookInbox) == inbox_before
        ended = await subscription(app, sub_id)
        assert not ended.is_active and ended.ended_at is not None
        assert not await allowed(app, "user_456", "export")
        assert await balance(app, "user_456") == 0

        # ---- 16. a wrong signature is refused and stores nothing
        body = json.dumps(
            {"id": "evt_forged", "type": "invoice.paid", "data": {"object": {"id": "in_x"}}}
        )
        forged = stripe.WebhookSignature.generate_signature_header(body, "whsec_not_the_secret")
        for headers in ({"Stripe-Signature": forged}, {}):
            r = await app.http.post(
                f"/api/v1/webhooks/stripe/{env}", content=body.encode(), headers=headers
            )
            assert r.status_code == 400, r.text
        assert await count(app, WebhookInbox) == inbox_before
        assert await count(app, WebhookInbox, WebhookInbox.event_id == "evt_forged") == 0

        # ---- the Stripe tools still answer the state the story left; the key can be
        # replaced (here with itself) through the other transport
        assert masked in await other.connect(stripe_fake.api_key)
        status = await ok(mcp, "getStripeIntegrationStatus")
        assert status["setupComplete"] and status["maskedApiKey"] == masked
        found = await ok(mcp, "discoverStripeData")
        assert {c["id"] for c in found["customers"]} == {
            seeded["alice"],
            seeded["bob"],
            cus_id,
            late.provider_customer_id,
        }
        assert all(c["alreadyMapped"] for c in found["customers"])
        again = await call(mcp, "getStripeImportStatus", {"jobId": started["jobId"]})
        assert again[1]["status"] == "COMPLETED"

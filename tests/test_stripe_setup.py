"""Connecting an environment to Stripe: the key (checked, encrypted, masked, replaced),
the setup (webhook endpoint in Stripe, STRIPE_DRIVEN, idempotent, refused when it
cannot be done) and the status, over REST and MCP, against the fake Stripe."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tanso_mcp.db.models import EnvironmentSecret
from tests.factories import make_plan
from tests.mcp_helpers import call, ok
from tests.stripe_helpers import stripe_app

pytestmark = pytest.mark.anyio


async def test_status_register_setup_over_mcp(db_url, stripe_fake, stripe_client):
    async with stripe_app(db_url, stripe_fake) as app, app.mcp() as mcp:
        status = await ok(mcp, "getStripeIntegrationStatus")
        assert status == status | {
            "hasApiKey": False,
            "hasWebhook": False,
            "stripeMode": "NONE",
            "stripeEnabled": False,
            "setupComplete": False,
            "currency": "USD",
        }
        # the setup needs a key first
        err, out = await call(mcp, "setupStripeIntegration", {"confirmAction": True})
        assert err and out["error"] == "precondition_failed"
        assert "registerStripeApiKey" in out["message"]
        # a live key on a test environment is refused, nothing stored
        err, out = await call(
            mcp,
            "registerStripeApiKey",
            {"stripeApiKey": "sk_live_abcdef1234", "confirmAction": True},
        )
        assert err and out["error"] == "invalid_request" and "sk_test_" in out["message"]
        # without confirmAction: a preview, nothing stored
        err, out = await call(mcp, "registerStripeApiKey", {"stripeApiKey": stripe_fake.api_key})
        assert err and out["error"] == "confirmation_required"
        assert (await ok(mcp, "getStripeIntegrationStatus"))["hasApiKey"] is False
        done = await ok(
            mcp,
            "registerStripeApiKey",
            {"stripeApiKey": stripe_fake.api_key, "confirmAction": True},
        )
        # the same answer as POST /api/v1/tanso/stripe/connect: the key shown masked
        assert done["maskedApiKey"] == "sk_test_…" + stripe_fake.api_key[-4:]
        assert done["replaced"] is False and done["success"] is True
        assert stripe_fake.api_key not in str(done)
        # stored encrypted: the ciphertext does not contain the key
        async with app.ctx.db.reader() as s:
            rows = (await s.scalars(select(EnvironmentSecret))).all()
        assert len(rows) == 1 and stripe_fake.api_key not in rows[0].ciphertext
        first = await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
        assert first == first | {
            "webhookCreated": True,
            "modeChanged": True,
            "stripeMode": "STRIPE_DRIVEN",
        }
        again = await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
        assert again == again | {"webhookCreated": False, "modeChanged": False}
        status = await ok(mcp, "getStripeIntegrationStatus")
        assert status == status | {
            "hasApiKey": True,
            "hasWebhook": True,
            "stripeMode": "STRIPE_DRIVEN",
            "stripeEnabled": True,
            "setupComplete": True,
        }
        assert status["maskedWebhookSecret"].startswith("whsec_…")
        # the endpoint exists in Stripe, for this environment's URL, with the six events
        endpoints = (await stripe_client.v1.webhook_endpoints.list_async()).data
        assert [e.url for e in endpoints] == [f"{app.url}/api/v1/webhooks/stripe/{app.env}"]
        assert sorted(endpoints[0].enabled_events) == sorted(
            [
                "checkout.session.completed",
                "invoice.created",
                "invoice.paid",
                "invoice.payment_failed",
                "customer.subscription.updated",
                "customer.subscription.deleted",
            ]
        )
        # an endpoint deleted in Stripe (or a key of another account) is recreated
        await stripe_client.v1.webhook_endpoints.delete_async(endpoints[0].id)
        third = await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
        assert third == third | {"webhookCreated": True, "modeChanged": False}
        endpoints = (await stripe_client.v1.webhook_endpoints.list_async()).data
        assert len(endpoints) == 1
        status2 = await ok(mcp, "getStripeIntegrationStatus")
        rest = (await app.req("GET", "/api/v1/tanso/stripe/status"))["data"]
        assert rest["webhookEndpointId"] == endpoints[0].id
        assert status2["setupComplete"] is True


async def test_rest_connect_replaces_the_key_and_checks_its_mode(db_url, stripe_fake):
    async with stripe_app(db_url, stripe_fake) as app:
        path = "/api/v1/tanso/stripe/connect"
        r = await app.req(
            "POST", path, 403, headers=app.h("client"), json={"stripeSecretKey": "sk_test_x1234"}
        )
        assert r["error"]["code"] == "forbidden"
        r = await app.req("POST", path, 400, json={"stripeSecretKey": "pk_test_1234567"})
        assert r["error"]["field"] == "stripeSecretKey"
        first = (await app.req("POST", path, json={"stripeSecretKey": "sk_test_first_1111"}))[
            "data"
        ]
        assert first["maskedApiKey"] == "sk_test_…1111" and first["replaced"] is False
        second = (await app.req("POST", path, json={"stripeSecretKey": "sk_test_second_2222"}))[
            "data"
        ]
        assert second["maskedApiKey"] == "sk_test_…2222" and second["replaced"] is True
        status = (await app.req("GET", "/api/v1/tanso/stripe/status", headers=app.h("read")))[
            "data"
        ]
        assert status["maskedApiKey"] == "sk_test_…2222"
        # the live environment takes only live keys
        r = await app.req(
            "POST",
            path,
            400,
            headers=app.tenant.headers("admin", "live"),
            json={"stripeSecretKey": "sk_test_abcd1234"},
        )
        assert "sk_live_" in r["error"]["message"]


async def test_a_bad_key_is_a_stripe_error_and_switches_nothing(db_url, stripe_fake):
    async with stripe_app(db_url, stripe_fake) as app:
        await app.req(
            "POST", "/api/v1/tanso/stripe/connect", json={"stripeSecretKey": "sk_test_wrong_0000"}
        )
        r = await app.req("POST", "/api/v1/tanso/stripe/setup", 502)
        assert (
            r["error"]["code"] == "stripe_api_error" and "Invalid API Key" in r["error"]["message"]
        )
        status = (await app.req("GET", "/api/v1/tanso/stripe/status"))["data"]
        assert status == status | {
            "hasWebhook": False,
            "stripeMode": "NONE",
            "stripeEnabled": False,
        }
        async with app.mcp() as mcp:
            err, out = await call(mcp, "setupStripeIntegration", {"confirmAction": True})
        assert err and out["error"] == "stripe_api_error" and "Invalid API Key" in out["message"]


async def test_setup_refused_while_native_subscriptions_are_active(
    db_url, stripe_fake, stripe_client
):
    async with stripe_app(db_url, stripe_fake) as app:
        plan = await make_plan(app.ctx, app.env, key="arr", price="10.00", timing="IN_ARREARS")
        await app.data("POST", "/customers", 201, json={"customerReferenceId": "old"})
        await app.data(
            "POST",
            "/subscriptions",
            201,
            json={"customerReferenceId": "old", "planId": plan["plan_id"]},
        )
        await app.req(
            "POST", "/api/v1/tanso/stripe/connect", json={"stripeSecretKey": stripe_fake.api_key}
        )
        r = await app.req("POST", "/api/v1/tanso/stripe/setup", 400)
        assert r["error"]["code"] == "precondition_failed"
        assert "cancel" in r["error"]["message"] and "import" in r["error"]["message"]
        assert (await stripe_client.v1.webhook_endpoints.list_async()).data == []

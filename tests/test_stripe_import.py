"""Discovering and importing an existing Stripe account (fake Stripe, real provider),
over MCP: discover flags what is linked; import is guarded by confirmAction, answers a
job at once and runs in the background; products become plans (base price, metered
prices → features with usage pricing linked to their meter), customers are created or
linked, live subscriptions mirrored with entitlements; a failing item is recorded and
never stops the others; importing again (also two imports at once) never duplicates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp.clock import FrozenClock
from tanso_mcp.db.models import Customer, Entitlement, Feature, Plan, PlanFeature, Subscription
from tanso_mcp.services.jobs import run_due
from tanso_mcp.settings import Settings
from tests.mcp_helpers import fails, inmemory, ok

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(db_url, stripe_fake) -> Settings:
    return Settings(
        database_url=db_url,
        key_cache_seconds=0,
        jobs_enabled=False,
        max_body_bytes=65536,
        stripe_api_base=stripe_fake.base_url,
        stripe_max_network_retries=0,
    )


async def seed_account(client) -> dict:
    """What the Stripe account already holds before tanso-mcp is connected."""
    v1 = client.v1
    meter = await v1.billing.meters.create_async(
        params={
            "display_name": "AI summaries",
            "event_name": "ai_summaries",
            "default_aggregation": {"formula": "sum"},
        }
    )
    pro = await v1.products.create_async(params={"name": "Pro Monthly"})
    pro_price = await v1.prices.create_async(
        params={
            "product": pro.id,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
        }
    )
    await v1.prices.create_async(
        params={
            "product": pro.id,
            "currency": "usd",
            "unit_amount_decimal": "2",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    starter = await v1.products.create_async(params={"name": "Starter"})
    starter_price = await v1.prices.create_async(
        params={
            "product": starter.id,
            "currency": "usd",
            "unit_amount": 900,
            "recurring": {"interval": "month"},
        }
    )
    weekly = await v1.products.create_async(params={"name": "Weekly"})
    await v1.prices.create_async(
        params={
            "product": weekly.id,
            "currency": "usd",
            "unit_amount": 100,
            "recurring": {"interval": "week"},
        }
    )
    alice = await v1.customers.create_async(
        params={
            "email": "alice@example.com",
            "name": "Alice Liddell",
            "metadata": {"customerReferenceId": "user_alice"},
        }
    )
    bob = await v1.customers.create_async(params={"email": "bob@example.com"})
    live = await v1.subscriptions.create_async(
        params={
            "customer": alice.id,
            "items": [{"price": pro_price.id}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    ended = await v1.subscriptions.create_async(
        params={
            "customer": bob.id,
            "items": [{"price": starter_price.id}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    await v1.subscriptions.cancel_async(ended.id)
    return {
        "meter": meter.id,
        "pro": pro.id,
        "weekly": weekly.id,
        "alice": alice.id,
        "bob": bob.id,
        "live": live.id,
    }


async def wait_for(mcp, job_id: str) -> dict:
    for _ in range(400):
        job = await ok(mcp, "getStripeImportStatus", {"jobId": job_id})
        if job["status"] not in ("PENDING", "RUNNING"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {job_id} did not finish: {job}")


async def counts(ctx) -> tuple[int, ...]:
    async with ctx.db.reader() as s:
        return tuple(
            [
                int(await s.scalar(select(func.count()).select_from(m)))
                for m in (Plan, Feature, PlanFeature, Customer, Subscription, Entitlement)
            ]
        )


async def test_discover_then_import_twice_without_duplicates(
    ctx, client, tenant, stripe_fake, stripe_client
):
    seeded = await seed_account(stripe_client)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        err = await fails(mcp, "discoverStripeData", {})
        assert err["error"] == "precondition_failed"  # no key yet
        err = await fails(mcp, "importStripeData", {"confirmAction": True})
        assert err["error"] == "precondition_failed"
        await ok(
            mcp,
            "registerStripeApiKey",
            {"stripeApiKey": stripe_fake.api_key, "confirmAction": True},
        )
        found = await ok(mcp, "discoverStripeData", {})
        assert found["warnings"] and "STRIPE_DRIVEN" in found["warnings"][0]
        assert {p["name"] for p in found["products"]} == {"Pro Monthly", "Starter", "Weekly"}
        assert len(found["customers"]) == 2 and len(found["subscriptions"]) == 2
        assert not any(
            x["alreadyMapped"]
            for kind in ("products", "customers", "subscriptions")
            for x in found[kind]
        )
        await ok(mcp, "setupStripeIntegration", {"confirmAction": True})

        refused = await fails(mcp, "importStripeData", {})
        assert refused["error"] == "confirmation_required"
        assert refused["preview"]["alreadyLinked"] == {
            "product": 0,
            "customer": 0,
            "subscription": 0,
        }
        assert await counts(ctx) == (0, 0, 0, 0, 0, 0)

        started = await ok(mcp, "importStripeData", {"confirmAction": True})
        assert started["status"] in ("PENDING", "RUNNING") and started["warnings"] == []
        job = await wait_for(mcp, started["jobId"])
        assert job["status"] == "COMPLETED_WITH_ERRORS", job
        assert (job["totalItems"], job["processedItems"], job["failedItems"]) == (7, 7, 1), job[
            "errorDetails"
        ]
        [error] = job["errorDetails"]
        assert error["item"] == "product" and error["id"] == seeded["weekly"]
        assert "week" in error["message"]
        first = await counts(ctx)

        async with ctx.db.reader() as s:
            pro = await s.scalar(select(Plan).where(Plan.provider_product_id == seeded["pro"]))
            usage = await s.scalar(
                select(Feature).where(Feature.provider_meter_id == seeded["meter"])
            )
            rule = await s.scalar(
                select(PlanFeature).where(
                    PlanFeature.plan_id == pro.id, PlanFeature.feature_id == usage.id
                )
            )
            alice = await s.scalar(
                select(Customer).where(Customer.provider_customer_id == seeded["alice"])
            )
            bob = await s.scalar(
                select(Customer).where(Customer.provider_customer_id == seeded["bob"])
            )
            sub = await s.scalar(
                select(Subscription).where(Subscription.provider_subscription_id == seeded["live"])
            )
        assert (pro.key, pro.price_minor, pro.status, pro.billing_timing) == (
            "pro_monthly",
            4900,
            "ACTIVE",
            "IN_ADVANCE",
        )
        assert usage.key == "pro_monthly_usage"
        assert rule.value["pricing"]["model"] == "usage" and rule.provider_price_id
        assert Decimal(str(rule.value["pricing"]["price_per_unit"])) == Decimal("0.02")
        assert (alice.reference_id, alice.first_name, alice.last_name) == (
            "user_alice",
            "Alice",
            "Liddell",
        )
        assert bob.reference_id == seeded["bob"]  # no reference in Stripe: its id
        assert sub.is_active and sub.customer_id == alice.id and sub.plan_id == pro.id
        assert first == (2, 2, 2, 2, 1, 1)  # the ended subscription is not mirrored

        again = await wait_for(
            mcp, (await ok(mcp, "importStripeData", {"confirmAction": True}))["jobId"]
        )
        assert (again["processedItems"], again["failedItems"]) == (7, 1)
        assert await counts(ctx) == first

        # usage of an imported customer reaches the account's own meter (its event name
        # is the meter's, not one tanso-mcp would have chosen); dated now, after the
        # meter and the subscription were created on Stripe's clock
        ctx.clocks.system.set(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
        ctx.clocks.forget(tenant.env_ids["test"])
        r = await client.post(
            "/api/v1/client/events",
            json={
                "eventIdempotencyKey": "imported-1",
                "eventName": "summary",
                "customerReferenceId": "user_alice",
                "featureKey": "pro_monthly_usage",
                "usageUnits": 7,
            },
            headers=tenant.headers("client"),
        )
        assert r.status_code == 201, r.text
        await run_due(ctx, tenant.env_ids["test"])
        assert await stripe_fake.meter_total(seeded["meter"], seeded["alice"]) == 7

        found = await ok(mcp, "discoverStripeData", {})
        mapped = {p["id"]: p["alreadyMapped"] for p in found["products"]}
        assert mapped == {seeded["pro"]: True, seeded["weekly"]: False} | {
            p["id"]: True for p in found["products"] if p["name"] == "Starter"
        }
        assert all(c["alreadyMapped"] for c in found["customers"])
        subs = {x["id"]: x["alreadyMapped"] for x in found["subscriptions"]}
        assert subs[seeded["live"]] is True and list(subs.values()).count(False) == 1


async def test_two_imports_at_once_create_each_record_once(ctx, tenant, stripe_fake, stripe_client):
    await seed_account(stripe_client)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "registerStripeApiKey",
            {"stripeApiKey": stripe_fake.api_key, "confirmAction": True},
        )
        await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
        a, b = await asyncio.gather(
            ok(mcp, "importStripeData", {"confirmAction": True}),
            ok(mcp, "importStripeData", {"confirmAction": True}),
        )
        jobs = [await wait_for(mcp, a["jobId"]), await wait_for(mcp, b["jobId"])]
    assert all(j["processedItems"] == 7 for j in jobs)
    assert await counts(ctx) == (2, 2, 2, 2, 1, 1)


async def test_unknown_job_is_not_found(ctx, tenant):
    async with inmemory(ctx, tenant.key("read")) as mcp:
        err = await fails(mcp, "getStripeImportStatus", {"jobId": "nope"})
    assert err["error"] == "not_found"


async def test_a_job_whose_process_died_is_resumed_by_the_job_runner(
    ctx, tenant, stripe_fake, stripe_client, clock
):
    from datetime import timedelta

    from tanso_mcp.db.stripe_usage_models import StripeImportJob
    from tanso_mcp.services.jobs import run_due

    await seed_account(stripe_client)
    env = tenant.env_ids["test"]
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "registerStripeApiKey",
            {"stripeApiKey": stripe_fake.api_key, "confirmAction": True},
        )
        await ok(mcp, "setupStripeIntegration", {"confirmAction": True})
    # a job row left RUNNING by a server that died before importing anything
    stale = clock.now() - timedelta(minutes=5)
    async with ctx.db.unit_of_work() as s:
        job = StripeImportJob(
            environment_id=env,
            status="RUNNING",
            total_items=7,
            processed_items=2,
            error_details=[],
            warnings=[],
            created_at=stale,
            modified_at=stale,
        )
        s.add(job)
        await s.flush()
        job_id = job.id
    await run_due(ctx, env)  # a job tick
    async with inmemory(ctx, tenant.key("read")) as mcp:
        done = await ok(mcp, "getStripeImportStatus", {"jobId": job_id})
    assert done["status"] == "COMPLETED_WITH_ERRORS"
    assert (done["processedItems"], done["failedItems"]) == (7, 1)
    assert await counts(ctx) == (2, 2, 2, 2, 1, 1)

"""Overage forwarding to Stripe Billing Meters, end to end against the fake Stripe server
with the real Stripe provider: a STRIPE_DRIVEN environment set up through the REST API,
a plan with plan credits and a metered feature, an in-arrears subscription (a Stripe
subscription, active at once), events ingested through the REST API.

Checked on Stripe's side (the fake's meter totals): credits drawn first are never
reported; the overage is reported exactly once — also after a crash between the send
and its record, across a Stripe outage (caught up by itself), with two reporters
running at once — and with timestamps Stripe accepts even when the environment's test
clock is weeks ahead of real time. Ingest itself never calls Stripe."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tanso_mcp.bootstrap import build_context
from tanso_mcp.clock import FrozenClock
from tanso_mcp.db.models import Customer, Feature, Subscription
from tanso_mcp.db.stripe_usage_models import MeterReport
from tanso_mcp.services import stripe_usage
from tanso_mcp.services.jobs import run_due
from tanso_mcp.settings import Settings
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal
RULE = {
    "pricing": {"model": "usage", "usage_unit_type": "tokens", "price_per_unit": "0.02"},
    "credits": {"denomination": "AI_TOKENS"},
}
STORAGE = {
    "pricing": {
        "model": "usage",
        "usage_unit_type": "gb",
        "price_per_unit": "1.00",
        "reset_mode": "accumulate",
    }
}


@pytest.fixture
def clock() -> FrozenClock:
    # the fake checks meter timestamps against real time, as Stripe does
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


async def ok(response, status=(200, 201)):
    assert response.status_code in status, response.text
    return response.json().get("data")


async def stripe_setup(ctx, client, tenant, stripe_fake) -> dict:
    """Connect, set up, a plan with 100 plan credits and a metered feature, a customer
    subscribed in arrears (a Stripe subscription). Returns the ids involved."""
    h = tenant.headers()
    await ok(
        await client.post(
            "/api/v1/tanso/stripe/connect", json={"stripeSecretKey": stripe_fake.api_key}, headers=h
        )
    )
    setup = await ok(await client.post("/api/v1/tanso/stripe/setup", headers=h))
    assert setup["stripeMode"] == "STRIPE_DRIVEN"
    env = tenant.env_ids["test"]
    plan = await make_plan(
        ctx,
        env,
        key="usage_pro",
        price="10.00",
        timing="IN_ARREARS",
        features={"api_calls": json.dumps(RULE), "storage": json.dumps(STORAGE)},
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100}]',
    )
    await ok(
        await client.post(
            f"{API}/customers",
            json={"customerReferenceId": "cus_1", "email": "one@example.com"},
            headers=h,
        )
    )
    sub = await ok(
        await client.post(
            f"{API}/subscriptions",
            json={"customerReferenceId": "cus_1", "planId": plan["plan_id"]},
            headers=h,
        )
    )
    async with ctx.db.reader() as s:
        c = await s.scalar(select(Customer).where(Customer.reference_id == "cus_1"))
        subscription = await s.scalar(select(Subscription).where(Subscription.customer_id == c.id))
        feature = await s.scalar(select(Feature).where(Feature.key == "api_calls"))
    assert subscription.is_active and subscription.provider_subscription_id, sub
    assert c.provider_customer_id and feature.provider_meter_id
    # the period comes from Stripe's clock: usage starts after it (not a second before)
    start = subscription.current_period_start + timedelta(seconds=1)
    ctx.clocks.system.set(max(ctx.clocks.system_now(), start))
    ctx.clocks.forget(env)
    return {
        "env": env,
        "customer": c.provider_customer_id,
        "meter": feature.provider_meter_id,
        "subscription": subscription.id,
    }


async def post(client, tenant, key, units, feature="api_calls"):
    await ok(
        await client.post(
            f"{API}/events",
            json={
                "eventIdempotencyKey": key,
                "eventName": "tokens",
                "customerReferenceId": "cus_1",
                "featureKey": feature,
                "usageUnits": units,
            },
            headers=tenant.headers("client"),
        )
    )


async def reports(ctx):
    """The overage reports (the plan's base fee, billed in arrears, has its own)."""
    async with ctx.db.reader() as s:
        return list(
            (
                await s.execute(
                    select(MeterReport)
                    .where(MeterReport.feature_id != stripe_usage.BASE_FEE_ID)
                    .order_by(MeterReport.from_q)
                )
            ).scalars()
        )


async def reconciliation(client, tenant, feature="api_calls"):
    data = await ok(
        await client.get(f"{API}/stripe/usage-reconciliation", headers=tenant.headers("read"))
    )
    return next(i for i in data["items"] if i["featureKey"] == feature)


async def test_credits_first_then_overage_reported_exactly_once(ctx, client, tenant, stripe_fake):
    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    before = len(await stripe_fake.events())
    await post(client, tenant, "e1", 60)
    await post(client, tenant, "e2", 70)  # 40 more from credits, 30 overage
    await post(client, tenant, "e3", 4, feature="storage")  # accumulate: never forwarded
    assert len(await stripe_fake.events()) == before  # ingest called nothing in Stripe
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 0

    await run_due(ctx, ids["env"])  # the job runner's pass
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 30
    await run_due(ctx, ids["env"])
    await run_due(ctx, ids["env"])
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 30

    await post(client, tenant, "e4", 12)
    await run_due(ctx, ids["env"])
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 42
    item = await reconciliation(client, tenant)
    assert [D(str(item[k])) for k in ("unitsAccepted", "unitsCoveredByCredits")] == [142, 100]
    assert [D(str(item[k])) for k in ("unitsBillable", "unitsReported", "unitsPending")] == [
        42,
        42,
        0,
    ]
    storage = await reconciliation(client, tenant, "storage")
    assert storage["forwarded"] is False
    # every event Stripe accepted is stamped within its window: not after real time
    stamps = [r.event_timestamp for r in await reports(ctx)]
    assert stamps and all(s <= ctx.clocks.system_now() for s in stamps)


async def test_crash_between_send_and_record(ctx, client, tenant, stripe_fake, clock, monkeypatch):
    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    await post(client, tenant, "e1", 125)  # 25 overage

    class Crash(BaseException):
        """The process dies: nothing after the send runs."""

    async def crash(*a, **k):
        raise Crash

    monkeypatch.setattr(stripe_usage, "record_outcomes", crash)
    with pytest.raises(BaseExceptionGroup):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(stripe_usage.report_overage(ctx, ids["env"], clock.now()))
    monkeypatch.undo()
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 25
    [row] = await reports(ctx)
    assert row.status == "pending"

    clock.set(clock.now() + timedelta(seconds=61))  # the dead claimer's lease runs out
    await run_due(ctx, ids["env"])
    [row] = await reports(ctx)
    assert row.status == "sent" and row.attempts == 1
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 25  # not 50


async def test_stripe_outage_delays_and_catches_up(ctx, client, tenant, stripe_fake, clock):
    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    await post(client, tenant, "e1", 110)
    with stripe_fake.outage():
        await run_due(ctx, ids["env"])
        [row] = await reports(ctx)
        assert row.status == "unknown" and row.attempts == 1
        await post(client, tenant, "e2", 5)  # ingest works while Stripe is down
        item = await reconciliation(client, tenant)
        assert D(str(item["unitsPending"])) == 15 and D(str(item["unitsReported"])) == 0
    clock.set(clock.now() + timedelta(seconds=10))
    await run_due(ctx, ids["env"])
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 15
    assert {r.status for r in await reports(ctx)} == {"sent"}


async def test_two_reporters_at_once(ctx, client, tenant, stripe_fake, settings, clock):
    """Two application contexts (as two server processes) on one database."""
    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    other = build_context(settings, clock=clock)
    try:
        for i in range(4):
            await post(client, tenant, f"e{i}", 130 if i == 0 else 9)
            await asyncio.gather(run_due(ctx, ids["env"]), run_due(other, ids["env"]))
    finally:
        await other.close()
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 30 + 3 * 9
    rows = await reports(ctx)
    assert [r.from_q for r in rows] == [0] + [r.to_q for r in rows[:-1]]


async def test_timestamps_stay_in_stripes_window_whatever_the_test_clock(
    ctx, client, tenant, stripe_fake
):
    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    await ok(
        await client.post(f"{API}/test-clock/advance", json={"days": 50}, headers=tenant.headers())
    )
    await post(client, tenant, "late", 108)
    await ok(
        await client.post(
            f"{API}/test-clock/advance", json={"seconds": 1}, headers=tenant.headers()
        )
    )
    # Stripe (the fake) refuses timestamps ahead of real time: accepted means in window
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 8
    [row] = await reports(ctx)
    assert row.status == "sent" and row.event_timestamp <= ctx.clocks.system_now()


async def test_identifier_seen_again_past_the_idempotency_window_counts_as_recorded(
    ctx, client, tenant, stripe_fake
):
    """Stripe's idempotency keys replay for 24 h; its identifiers may stay unique
    longer. A retry that meets its identifier again (under a new idempotency key here)
    is "already recorded": a success, and Stripe's total does not move."""
    from tanso_stripe import meters

    from tanso_mcp.plugin import CustomerData, UsageReport
    from tanso_mcp.services import payments

    ids = await stripe_setup(ctx, client, tenant, stripe_fake)
    async with ctx.db.reader() as s:
        provider = await payments.provider_for(ctx, s, ids["env"])
    report = UsageReport(
        customer=CustomerData("c", "cus_1", external_id=ids["customer"]),
        feature_key="api_calls",
        quantity=D(3),
        period_start=ctx.clocks.system_now(),
        occurred_at=ctx.clocks.system_now(),
    )
    first = await meters.send_meter_event(
        provider, report, identifier="tanso_step_1", idempotency_key="k1"
    )
    again = await meters.send_meter_event(
        provider, report, identifier="tanso_step_1", idempotency_key="k2-after-24h"
    )
    assert first.external_id == again.external_id == "tanso_step_1"
    assert again.data == {"alreadyRecorded": True}
    assert await stripe_fake.meter_total(ids["meter"], ids["customer"]) == 3

"""Catalog edits reach every existing subscription of the plan at once: a rule's limit or
enabled flag, a feature linked to or unlinked from the plan, a feature switched off or on
— edited over MCP, checked over REST before and after. Price changes of a rule apply
from each subscription's next period; an open period keeps the prices it started with."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select

from tanso_mcp.db.models import Entitlement
from tests.billing_helpers import Billing, money
from tests.factories import make_plan
from tests.mcp_helpers import inmemory, ok

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal


def rule(limit=None, price="0.10") -> str:
    pricing = {"model": "usage", "usage_unit_type": "calls", "price_per_unit": price}
    if limit is not None:
        pricing["max_usage"] = limit
    return json.dumps({"pricing": pricing})


async def allowed(b: Billing, feature: str, ref: str = "c") -> bool:
    r = await b.client.get(f"{API}/entitlements/{ref}/{feature}", headers=b.tenant.headers("read"))
    assert r.status_code == 200, r.text
    return r.json()["data"]["allowed"]


async def ingest(b: Billing, key: str, units: int, feature: str = "api_calls") -> dict:
    r = await b.client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "use",
            "customerReferenceId": "c",
            "featureKey": feature,
            "usageUnits": units,
        },
        headers=b.tenant.headers("client"),
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["data"]


async def live_rows(b: Billing, sub_id: str) -> dict[str, bool]:
    async with b.ctx.db.reader() as s:
        rows = (
            await s.execute(
                select(Entitlement.feature_key, Entitlement.revoked_at).where(
                    Entitlement.subscription_id == sub_id
                )
            )
        ).all()
    return {k: r is None for k, r in rows}


async def setup(b: Billing, *, subscribers: int = 2) -> tuple[dict, list[str]]:
    plan = await make_plan(
        b.ctx, b.env, key="pro", price="0", features={"api_calls": rule(limit=5)}
    )
    await make_plan(b.ctx, b.env, key="other", price="0", features={"exports": None})
    subs = []
    for n in range(subscribers):
        ref = "c" if n == 0 else f"c{n}"
        await b.customer(ref)
        sub, _ = await b.subscribe(ref, plan["plan_id"])
        subs.append(sub["id"])
    return plan, subs


async def test_limit_and_enabled_flag_take_effect_at_once(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan, subs = await setup(b)
    fid = plan["feature_ids"]["api_calls"]
    await ingest(b, "e1", 5)
    assert await allowed(b, "api_calls") is False  # 5 of 5 used
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "adminUpdateFeatureRule",
            {"planId": plan["plan_id"], "featureId": fid, "valueJson": rule(limit=10)},
        )
        assert await allowed(b, "api_calls") is True
        assert (await ingest(b, "e2", 1))["usageLimitExceeded"] is False
        await ok(
            mcp,
            "adminUpdateFeatureRule",
            {"planId": plan["plan_id"], "featureId": fid, "isEnabled": False},
        )
        assert await allowed(b, "api_calls") is False
        assert [await live_rows(b, s) for s in subs] == [{"api_calls": False}] * 2
        await ok(
            mcp,
            "adminUpdateFeatureRule",
            {"planId": plan["plan_id"], "featureId": fid, "isEnabled": True},
        )
        assert await allowed(b, "api_calls") is True
        assert [await live_rows(b, s) for s in subs] == [{"api_calls": True}] * 2
    await b.check()


async def test_linking_and_unlinking_reach_existing_subscribers(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan, subs = await setup(b)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        exports = next(
            f for f in (await ok(mcp, "adminListFeatures", {}))["items"] if f["key"] == "exports"
        )
        assert await allowed(b, "exports") is False
        await ok(
            mcp,
            "adminLinkFeatureToPlan",
            {"planId": plan["plan_id"], "featureId": exports["id"]},
        )
        assert await allowed(b, "exports") is True
        assert [await live_rows(b, s) for s in subs] == [{"api_calls": True, "exports": True}] * 2
        await ok(
            mcp,
            "adminUnlinkFeatureFromPlan",
            {"planId": plan["plan_id"], "featureId": exports["id"], "confirmAction": True},
        )
        assert await allowed(b, "exports") is False
        assert [await live_rows(b, s) for s in subs] == [{"api_calls": True, "exports": False}] * 2
        # a feature switched off everywhere, then on again
        await ok(
            mcp,
            "adminUpdateFeature",
            {"featureId": plan["feature_ids"]["api_calls"], "isEnabled": False},
        )
        assert await allowed(b, "api_calls") is False
        await ok(
            mcp,
            "adminUpdateFeature",
            {"featureId": plan["feature_ids"]["api_calls"], "isEnabled": True},
        )
        assert await allowed(b, "api_calls") is True
    await b.check()


async def test_re_enabled_after_a_renewal_is_granted_at_once(ctx, client, tenant):
    """A rule disabled across a renewal (the renewal revokes the entitlement) and enabled
    again mid-period is granted now, not at the next renewal."""
    b = Billing(ctx, client, tenant)
    plan, subs = await setup(b, subscribers=1)
    fid = plan["feature_ids"]["api_calls"]
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        args = {"planId": plan["plan_id"], "featureId": fid}
        await ok(mcp, "adminUpdateFeatureRule", {**args, "isEnabled": False})
        await b.to("2026-02-20T00:00:00Z")  # renewed on Feb 15
        assert await allowed(b, "api_calls") is False
        await ok(mcp, "adminUpdateFeatureRule", {**args, "isEnabled": True})
        assert await allowed(b, "api_calls") is True
    await b.check()


async def test_inactive_and_past_due_subscriptions_are_not_granted(ctx, client, tenant):
    """Linking a feature grants it only where the plan's features are granted now: not to
    a subscription waiting for its first payment."""
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="paid", price="20.00", features={"api_calls": None})
    await make_plan(ctx, b.env, key="other", price="0", features={"exports": None})
    await b.customer("c")
    sub, _ = await b.subscribe("c", plan["plan_id"])  # pending payment
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        exports = next(
            f for f in (await ok(mcp, "adminListFeatures", {}))["items"] if f["key"] == "exports"
        )
        await ok(
            mcp,
            "adminLinkFeatureToPlan",
            {"planId": plan["plan_id"], "featureId": exports["id"]},
        )
    assert await live_rows(b, sub["id"]) == {}
    assert await allowed(b, "exports") is False
    await b.check()


async def test_a_price_change_applies_from_the_next_period(ctx, client, tenant):
    """IN_ARREARS: the open period keeps the price it started with (0.10 per call), the
    next period is billed at the new one (0.20)."""
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx, b.env, key="arr", price="0", timing="IN_ARREARS", features={"api_calls": rule()}
    )
    fid = plan["feature_ids"]["api_calls"]
    await b.customer("c")
    _, first = await b.subscribe("c", plan["plan_id"], gracePeriod=30)
    await ingest(b, "jan", 10)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "adminUpdateFeatureRule",
            {"planId": plan["plan_id"], "featureId": fid, "valueJson": rule(price="0.20")},
        )
    await ingest(b, "jan2", 10)
    listed = (await b.invoices("c"))[0]
    assert money(listed["amount"]) == D("2.00")  # 20 calls at the period's 0.10
    await b.to("2026-02-15T00:00:00Z")
    await ingest(b, "feb", 10)
    invoices = await b.invoices("c")
    assert money(invoices[0]["amount"]) == D("2.00")
    assert money(invoices[1]["amount"]) == D("2.00")  # 10 calls at 0.20
    await b.check()


async def test_in_advance_price_change_applies_from_the_next_period(ctx, client, tenant):
    """IN_ADVANCE: the usage of the period in which the price changed is billed (on the
    next period's invoice) at the price that period started with."""
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="adv", price="5.00", features={"api_calls": rule()})
    fid = plan["feature_ids"]["api_calls"]
    await b.customer("c")
    _, first = await b.subscribe("c", plan["plan_id"], gracePeriod=30)
    await b.pay(first["id"])
    await ingest(b, "jan", 10)
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        await ok(
            mcp,
            "adminUpdateFeatureRule",
            {"planId": plan["plan_id"], "featureId": fid, "valueJson": rule(price="0.20")},
        )
    await b.to("2026-02-15T00:00:00Z")
    second = (await b.invoices("c"))[-1]
    assert money(second["amount"]) == D("6.00")  # 5.00 + 10 calls at January's 0.10
    await b.pay(second["id"])
    await ingest(b, "feb", 10)
    await b.to("2026-03-15T00:00:00Z")
    third = (await b.invoices("c"))[-1]
    assert money(third["amount"]) == D("7.00")  # 5.00 + 10 calls at February's 0.20
    await b.check()

"""One entitlement rule for every path: what a check answers is what the next ingest
does, whether the usage arrives alone, in a batch or over MCP."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tanso_mcp.settings import Settings
from tests.metering_factories import make_plan, subscribe

pytestmark = pytest.mark.anyio

API = "/api/v1/client"


@pytest.fixture
def settings(db_url) -> Settings:
    return Settings(
        database_url=db_url,
        key_cache_seconds=600,
        entitlement_cache_seconds=600,
        jobs_enabled=False,
        max_body_bytes=65536,
    )


def limited(limit: int) -> str:
    return json.dumps(
        {
            "pricing": {
                "model": "usage",
                "usage_unit_type": "calls",
                "price_per_unit": "0.10",
                "max_usage": limit,
            }
        }
    )


async def two_subscriptions(ctx, env, clock):
    small = await make_plan(
        ctx, env, key="small", timing="IN_ARREARS", features={"api_calls": limited(5)}
    )
    large = await make_plan(
        ctx, env, key="large", timing="IN_ARREARS", features={"api_calls": limited(100)}
    )
    first = await subscribe(ctx, env, "cus_1", small["plan_id"])
    clock.set(clock.now() + timedelta(seconds=1))
    second = await subscribe(ctx, env, "cus_1", large["plan_id"])
    return first, second


async def check(client, tenant, ref="cus_1", feature="api_calls"):
    r = await client.get(f"{API}/entitlements/{ref}/{feature}", headers=tenant.headers("read"))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def event(key, units=1, **kw):
    return {
        "eventIdempotencyKey": key,
        "eventName": "call",
        "customerReferenceId": "cus_1",
        "featureKey": "api_calls",
        "usageUnits": units,
        **kw,
    }


async def test_check_predicts_single_ingest_across_two_subscriptions(ctx, client, tenant, clock):
    env = tenant.env_ids["test"]
    first, second = await two_subscriptions(ctx, env, clock)
    for n in range(5):
        r = await client.post(
            f"{API}/events", json=event(f"e{n}"), headers=tenant.headers("client")
        )
        assert r.status_code == 201, r.text
    d = await check(client, tenant)
    assert d["allowed"] is True
    assert d["subscriptionId"] == second
    assert d["usage"] == {"used": 0, "limit": 100, "remaining": 100}
    r = await client.post(f"{API}/events", json=event("e5"), headers=tenant.headers("client"))
    assert r.status_code == 201, r.text
    assert r.json()["data"]["usageLimitExceeded"] is False
    d = await check(client, tenant)
    assert d["subscriptionId"] == second
    assert d["usage"]["used"] == 1
    # a named subscription is honoured even when it has no room left
    r = await client.post(
        f"{API}/events", json=event("e6", subscriptionId=first), headers=tenant.headers("client")
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["usageLimitExceeded"] is True


async def test_check_predicts_batch_ingest_across_two_subscriptions(ctx, client, tenant, clock):
    env = tenant.env_ids["test"]
    first, second = await two_subscriptions(ctx, env, clock)
    r = await client.post(
        f"{API}/events/batch",
        json={"events": [event(f"b{n}") for n in range(8)]},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 200, r.text
    results = r.json()["data"]["results"]
    assert [x.get("usageLimitExceeded", False) for x in results] == [False] * 8
    d = await check(client, tenant)
    assert d["allowed"] is True and d["subscriptionId"] == second
    assert d["usage"]["used"] == 3


# --------------------------------------------------------------------------- defect 2


async def test_a_new_customer_is_seen_by_the_next_check_rest(ctx, client, tenant):
    d = await check(client, tenant, ref="newbie")
    assert d["allowed"] is False and d["reason"] == "Customer not found"  # miss cached
    r = await client.post(
        f"{API}/customers",
        json={"customerReferenceId": "newbie"},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 201, r.text
    d = await check(client, tenant, ref="newbie")
    assert d["reason"] != "Customer not found"


async def test_a_new_customer_is_seen_by_the_next_check_mcp(ctx, client, tenant):
    from tests.mcp_helpers import inmemory, ok

    async with inmemory(ctx, tenant.key("admin")) as mcp:
        d = await ok(
            mcp, "checkEntitlement", {"customerReferenceId": "agent_made", "featureKey": "x"}
        )
        assert d["reason"] == "Customer not found"
        await ok(mcp, "createCustomer", {"customerReferenceId": "agent_made", "email": "a@b.co"})
        d = await ok(
            mcp, "checkEntitlement", {"customerReferenceId": "agent_made", "featureKey": "x"}
        )
        assert d["reason"] != "Customer not found"
    d = await check(client, tenant, ref="agent_made", feature="x")
    assert d["reason"] != "Customer not found"


async def test_side_effects_are_dropped_when_the_unit_of_work_rolls_back(ctx, tenant):
    env = tenant.env_ids["test"]
    emitted = []

    async def hook(name, principal, payload):
        emitted.append(name)

    ctx.extras["emit"] = hook
    before = ctx.generation(env)
    principal = await ctx.keys.resolve(tenant.key("admin"))
    with pytest.raises(RuntimeError):
        async with ctx.db.unit_of_work() as s:
            ctx.changed(s, env)
            ctx.announce(s, "customer.created", principal, {})
            assert ctx.generation(env) == before  # nothing before the commit
            raise RuntimeError("boom")
    assert ctx.generation(env) == before and emitted == []
    async with ctx.db.unit_of_work() as s:
        ctx.changed(s, env)
        ctx.announce(s, "customer.created", principal, {})
        assert ctx.generation(env) == before and emitted == []
    assert ctx.generation(env) == before + 1 and emitted == ["customer.created"]

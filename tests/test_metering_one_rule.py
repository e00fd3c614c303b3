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

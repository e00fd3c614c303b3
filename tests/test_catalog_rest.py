"""Customers, plans and features over REST."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Customer
from tests.factories import make_plan

pytestmark = pytest.mark.anyio
BASE = "/api/v1/client"


async def _count(ctx, model):
    async with ctx.db.reader() as s:
        return await s.scalar(select(func.count()).select_from(model))


async def test_create_get_patch_customer(client, tenant):
    h = tenant.headers("client")
    r = await client.post(
        f"{BASE}/customers",
        headers=h,
        json={"customerReferenceId": "user_1", "email": "a@b.co", "firstName": "Ada"},
    )
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["customerReferenceId"] == "user_1" and data["firstName"] == "Ada"
    assert data["subscriptions"] == [] and "creditPools" not in data and "lastName" not in data
    r = await client.patch(f"{BASE}/customers/user_1", headers=h, json={"lastName": "L"})
    assert r.status_code == 200 and r.json()["data"]["lastName"] == "L"
    r = await client.get(f"{BASE}/customers/user_1", headers=tenant.headers("read"))
    assert r.json()["data"]["email"] == "a@b.co" and r.json()["data"]["firstName"] == "Ada"


async def test_alias_external_client_customer_id(client, tenant):
    r = await client.post(
        f"{BASE}/customers", headers=tenant.headers(), json={"externalClientCustomerId": "ext_9"}
    )
    assert r.status_code == 201 and r.json()["data"]["customerReferenceId"] == "ext_9"


async def test_duplicate_customer_is_409_and_writes_nothing(ctx, client, tenant):
    h = tenant.headers()
    await client.post(f"{BASE}/customers", headers=h, json={"customerReferenceId": "dup"})
    before = await _count(ctx, Customer)
    r = await client.post(f"{BASE}/customers", headers=h, json={"customerReferenceId": "dup"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert await _count(ctx, Customer) == before


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "customerReferenceId"),
        ({"customerReferenceId": ""}, "customerReferenceId"),
        ({"customerReferenceId": "x" * 129}, "customerReferenceId"),
        ({"customerReferenceId": 5}, "customerReferenceId"),
        ({"customerReferenceId": "ok", "email": "not-an-email"}, "email"),
        ({"customerReferenceId": "ok", "emial": "a@b.co"}, "emial"),
        ({"customerReferenceId": "a", "externalClientCustomerId": "b"}, "customerReferenceId"),
    ],
)
async def test_bad_customer_bodies(ctx, client, tenant, body, field):
    r = await client.post(f"{BASE}/customers", headers=tenant.headers(), json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert await _count(ctx, Customer) == 0


async def test_read_key_cannot_create_customers(client, tenant):
    r = await client.post(
        f"{BASE}/customers", headers=tenant.headers("read"), json={"customerReferenceId": "x"}
    )
    assert r.status_code == 403


async def test_unknown_customer_is_404(client, tenant):
    r = await client.get(f"{BASE}/customers/ghost", headers=tenant.headers())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.patch(f"{BASE}/customers/ghost", headers=tenant.headers(), json={})
    assert r.status_code == 404


async def test_customers_are_isolated_between_environments_and_accounts(ctx, client, tenant):
    from tests.conftest import make_tenant

    await client.post(
        f"{BASE}/customers", headers=tenant.headers(), json={"customerReferenceId": "shared"}
    )
    assert (
        await client.get(f"{BASE}/customers/shared", headers=tenant.headers("admin", "live"))
    ).status_code == 404
    other = await make_tenant(ctx, "other")
    assert (
        await client.get(f"{BASE}/customers/shared", headers=other.headers())
    ).status_code == 404
    # the same reference may exist independently elsewhere
    r = await client.post(
        f"{BASE}/customers", headers=other.headers(), json={"customerReferenceId": "shared"}
    )
    assert r.status_code == 201


async def test_plans_lists_only_active_with_pricing_and_credits(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await make_plan(ctx, env, key="draft", activate=False)
    await make_plan(
        ctx,
        env,
        key="pro",
        price="99.00",
        features={
            "api_access": None,
            "api_calls": '{"pricing":{"model":"usage","price_per_unit":0.10,'
            '"usage_unit_type":"api_calls","max_usage":10000}}',
            "tokens": {
                "pricing": {
                    "model": "graduated",
                    "usage_unit_type": "tokens",
                    "tiers": [
                        {"up_to": 1000, "price_per_unit": "0.10"},
                        {"up_to": "inf", "price_per_unit": "0.05"},
                    ],
                }
            },
        },
        credit_allocations='[{"denomination":"AI_TOKENS","creditAmount":1000,'
        '"grantExpiresMonths":2,"hardLimit":true}]',
    )
    r = await client.get(f"{BASE}/plans", headers=tenant.headers("read"))
    assert r.status_code == 200
    body = r.json()
    assert body["pagination"] == {"limit": 50, "offset": 0, "total": 1, "hasMore": False}
    (item,) = body["data"]
    assert item["plan"]["key"] == "pro" and item["plan"]["priceAmount"] == 99.00
    assert '"priceAmount":99.00' in r.text  # exact decimal on the wire
    feats = {f["key"]: f for f in item["features"]}
    assert feats["api_access"]["pricingType"] == "included"
    assert feats["api_calls"]["pricingType"] == "usage_based"
    assert feats["api_calls"]["pricing"]["maxUsage"] == 10000
    assert feats["tokens"]["pricing"]["tiers"][1]["upTo"] == "inf"
    (alloc,) = item["creditAllocations"]
    assert alloc["denomination"] == "AI_TOKENS" and alloc["creditAmount"] == 1000
    assert alloc["hardLimit"] is True and alloc["grantExpiresMonths"] == 2


async def test_features_list_and_get(ctx, client, tenant):
    await make_plan(ctx, tenant.env_ids["test"], features={"a": None, "b": None})
    r = await client.get(f"{BASE}/features?limit=1", headers=tenant.headers("read"))
    assert r.json()["pagination"] == {"limit": 1, "offset": 0, "total": 2, "hasMore": True}
    assert len(r.json()["data"]) == 1
    r = await client.get(f"{BASE}/features/b", headers=tenant.headers("read"))
    assert r.json()["data"]["key"] == "b" and r.json()["data"]["isEnabled"] is True
    assert (await client.get(f"{BASE}/features/zz", headers=tenant.headers())).status_code == 404
    r = await client.get(f"{BASE}/features?limit=0", headers=tenant.headers())
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"
    r = await client.get(f"{BASE}/features?limit=abc", headers=tenant.headers())
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"

"""Hostile JSON: numbers too large to use, integers beyond 64 bits, deep nesting and huge
offsets give a 400 naming the problem, never a 500, a hang or a half-written state; wide
numbers written as decimals are kept exactly."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp import jsonnum
from tanso_mcp.db import models
from tanso_mcp.web.hotpath import loads_exact
from tanso_mcp.web.jsonio import MAX_DEPTH
from tests.billing_helpers import API, Billing
from tests.factories import make_plan

pytestmark = pytest.mark.anyio


async def subscriptions(ctx) -> int:
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(models.Subscription)))


async def raw_post(client, tenant, path: str, body: str):
    return await client.post(
        API + path,
        content=body.encode(),
        headers={**tenant.headers("admin"), "Content-Type": "application/json"},
    )


async def test_huge_exponent_is_refused_at_once(client, tenant):
    t0 = time.monotonic()
    r = await raw_post(client, tenant, "/test-clock/advance", '{"days":1E+999999999}')
    assert time.monotonic() - t0 < 2
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == "body" and "out of range" in err["message"]
    r = await raw_post(client, tenant, "/test-clock/advance", '{"days":0E-999999999}')
    assert r.status_code == 400 and "out of range" in r.json()["error"]["message"]
    for wide in ("9" * 150, "100000000000000000000", "-9223372036854775809"):
        body = '{"customerReferenceId":"c","metadata":{"x":' + wide + "}}"
        r = await raw_post(client, tenant, "/customers", body)
        assert r.status_code == 400 and "range" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("number", ["1e20", "-1.5e30", "18446744073709551615"])
async def test_wide_numbers_in_metadata_are_kept_exactly(ctx, client, tenant, number):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="free", price="0")
    await b.customer("c1")
    body = (
        f'{{"customerReferenceId":"c1","planId":"{plan["plan_id"]}","metadata":{{"a":{number}}}}}'
    )
    r = await raw_post(client, tenant, "/subscriptions", body)
    assert r.status_code == 201, r.text
    sub_id = r.json()["data"]["subscription"]["id"]
    got = (await b.data("GET", f"/subscriptions/{sub_id}"))["metadata"]["a"]
    assert Decimal(str(got)) == Decimal(number)
    customer = await b.data("GET", "/customers/c1")
    assert customer["customerReferenceId"] == "c1"


async def test_out_of_range_metadata_changes_nothing(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(ctx, b.env, key="free", price="0")
    await b.customer("c1")
    before = await subscriptions(ctx)
    plan_id = plan["plan_id"]
    body = f'{{"customerReferenceId":"c1","planId":"{plan_id}","metadata":{{"a":1E+1000000}}}}'
    r = await raw_post(client, tenant, "/subscriptions", body)
    assert r.status_code == 400, r.text
    assert await subscriptions(ctx) == before
    assert (await client.get(API + "/customers/c1", headers=b.h)).status_code == 200


@pytest.mark.parametrize("path", ["/customers", "/events", "/events/batch", "/entitlements"])
@pytest.mark.parametrize("shape", ["[", '{"a":'])
async def test_deep_nesting_is_a_400(client, tenant, path, shape):
    closing = "]" if shape == "[" else "}"
    for depth in (MAX_DEPTH + 1, 1000, 5000):
        r = await raw_post(client, tenant, path, shape * depth + "1" + closing * depth)
        assert r.status_code == 400, (path, depth, r.text)
        assert r.json()["error"]["field"] == "body"


def test_nesting_up_to_the_limit_is_accepted():
    doc = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    assert loads_exact(doc.encode()) is not None
    assert loads_exact(doc.replace("1", "1.5").encode()) is not None


def test_number_bounds():
    assert jsonnum.parse_float("1e100") == Decimal("1e100")
    assert jsonnum.parse_float("0.0001") == Decimal("0.0001")
    assert jsonnum.wide_int("18446744073709551615") == 2**64 - 1
    assert jsonnum.wide_int("18446744073709551616") == Decimal(2**64)
    for bad in ("1e101", "1e-101", "0e-200"):
        with pytest.raises(jsonnum.NumberOutOfRange):
            jsonnum.parse_float(bad)


@pytest.mark.parametrize("offset", ["2147483648", "9223372036854775808", "-1"])
async def test_offset_is_bounded(client, tenant, offset):
    for path in ("/plans", "/features"):
        r = await client.get(f"{API}{path}?offset={offset}", headers=tenant.headers("admin"))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == "offset"
    ok = await client.get(f"{API}/plans?offset=2147483647", headers=tenant.headers("admin"))
    assert ok.status_code == 200 and ok.json()["data"] == []

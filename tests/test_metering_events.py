"""POST /events and /events/batch: exactly once, counters, limits, cost and revenue,
auto-creation, bad input."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Customer, Event, Feature, UsageCounter
from tests.metering_factories import metered_setup

pytestmark = pytest.mark.anyio

API = "/api/v1/client"


def ev(key: str | None = None, **kw):
    body = {
        "eventName": "api_call",
        "customerReferenceId": "cus_1",
        "featureKey": "api_calls",
        "usageUnits": 1,
    }
    if key is not None:
        body["eventIdempotencyKey"] = key
    body.update(kw)
    return body


async def count(ctx, model, *where) -> int:
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)))


async def post(client, tenant, body, role="client", headers=None):
    return await client.post(
        f"{API}/events", json=body, headers={**tenant.headers(role), **(headers or {})}
    )


async def test_event_accepted_counted_and_exactly_once(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    r = await post(client, tenant, ev("k1", usageUnits=3))
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["eventId"] and data["usageLimitExceeded"] is False
    assert data["customerAutoCreated"] is False
    assert Decimal(str(data["overageUnits"])) == 3
    assert Decimal(str(data["creditsDeducted"])) == 0
    # the same key again: 409, nothing changes
    r2 = await post(client, tenant, ev("k1", usageUnits=5))
    assert r2.status_code == 409
    assert r2.json()["error"]["code"] == "duplicate_event"
    assert await count(ctx, Event) == 1
    async with ctx.db.reader() as s:
        used = await s.scalar(select(UsageCounter.used_q))
        e = await s.scalar(select(Event))
    assert used == 30000
    assert e.usage_q == 30000 and e.billable_q == 30000 and e.overage_q == 30000
    assert e.revenue_micros == 300000  # 3 x 0.10
    check = await client.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers("read"))
    assert check.status_code == 200
    d = check.json()["data"]
    assert d["allowed"] is True and d["isAllowed"] is True
    assert d["usage"] == {"used": 3, "limit": 100, "remaining": 97}


async def test_header_key_wins_and_generated_key(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    r = await post(client, tenant, ev("body-key"), headers={"X-Idempotency-Key": "hdr"})
    assert r.status_code == 201
    async with ctx.db.reader() as s:
        keys = set((await s.execute(select(Event.idempotency_key))).scalars())
    assert keys == {"hdr"}
    r = await post(client, tenant, ev(None))
    assert r.status_code == 201
    r = await post(client, tenant, ev("hdr"))
    assert r.status_code == 409
    assert await count(ctx, Event) == 2


async def test_usage_limit_zeroes_further_events(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    r = await post(client, tenant, ev("a", usageUnits=99))
    assert r.status_code == 201
    # crosses the line: recorded in full
    r = await post(client, tenant, ev("b", usageUnits=5))
    assert r.status_code == 201 and r.json()["data"]["usageLimitExceeded"] is False
    # limit reached: stored, zero billable, 200 with usageLimitExceeded
    r = await post(client, tenant, ev("c", usageUnits=7))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["usageLimitExceeded"] is True
    async with ctx.db.reader() as s:
        e = await s.scalar(select(Event).where(Event.idempotency_key == "c"))
        used = await s.scalar(select(UsageCounter.used_q))
    assert e.usage_q == 70000 and e.billable_q == 0 and e.overage_q == 0 and e.revenue_micros == 0
    assert used == 1040000
    check = await client.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers("read"))
    d = check.json()["data"]
    assert d["allowed"] is False and d["reason"] == "Usage limit exceeded"
    assert d["usage"]["remaining"] == 0


async def test_auto_creates_customer_and_feature(ctx, client, tenant):
    r = await post(client, tenant, ev("x", customerReferenceId="new_c", featureKey="new_f"))
    assert r.status_code == 201, r.text
    assert r.json()["data"]["customerAutoCreated"] is True
    async with ctx.db.reader() as s:
        c = await s.scalar(select(Customer).where(Customer.reference_id == "new_c"))
        f = await s.scalar(select(Feature).where(Feature.key == "new_f"))
    assert c.source == "EVENT_AUTO_CREATED"
    assert f.source == "EVENT_AUTO_CREATED" and f.name == "new f"
    r = await post(client, tenant, ev("y", customerReferenceId="new_c", featureKey="new_f"))
    assert r.json()["data"]["customerAutoCreated"] is False
    check = await client.get(f"{API}/entitlements/new_c/new_f", headers=tenant.headers("read"))
    assert check.json()["data"]["allowed"] is False


@pytest.mark.parametrize(
    "body,field",
    [
        ({"usageUnits": -1}, "usageUnits"),
        ({"usageUnits": "abc"}, "usageUnits"),
        ({"usageUnits": True}, "usageUnits"),
        ({"usageUnits": "1.00001"}, "usageUnits"),
        ({"eventIdempotencyKey": "k" * 129}, "eventIdempotencyKey"),
        ({"customerReferenceId": "c" * 129}, "customerReferenceId"),
        ({"featureKey": 12}, "featureKey"),
        ({"featureKey": "bad key!"}, "featureKey"),
        ({"eventName": None}, "eventName"),
        ({"usageUnit": 3}, "usageUnit"),
        ({"occurredAt": "yesterday"}, "occurredAt"),
        ({"occurredAt": "2026-01-15T10:00:00"}, "occurredAt"),
        ({"occurredAt": "2026-01-16T10:00:00Z"}, "occurredAt"),
        ({"costAmount": -0.5}, "costAmount"),
        ({"costInput": {"model": "gpt-4o", "tokens": 3}}, "costInput.tokens"),
        ({"meta": [1, 2]}, "meta"),
        ({"customerId": "abc"}, "customerId"),
    ],
)
async def test_bad_input_is_400_naming_the_field(ctx, client, tenant, body, field):
    raw = ev("bad")
    raw.update(body)
    raw = {k: v for k, v in raw.items() if v is not None}
    r = await post(client, tenant, raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert err["field"] == field, err
    assert await count(ctx, Event) == 0
    assert await count(ctx, Customer) == 0


async def test_malformed_json_and_oversized_body(ctx, client, tenant):
    r = await client.post(
        f"{API}/events",
        content=b'{"eventName": "x",',
        headers={**tenant.headers("client"), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    big = ev("big", meta={"blob": "x" * 70000})
    r = await post(client, tenant, big)
    assert r.status_code == 413
    r = await client.post(f"{API}/events", content=b"[1,2]", headers={**tenant.headers("client")})
    assert r.status_code == 400
    assert await count(ctx, Event) == 0


async def test_read_key_cannot_ingest(ctx, client, tenant):
    r = await post(client, tenant, ev("k"), role="read")
    assert r.status_code == 403


async def test_batch_per_item_results_in_order(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    await post(client, tenant, ev("dup"))
    events = [
        ev("b1", usageUnits=2),
        ev("dup"),
        {"eventName": "x", "customerReferenceId": "cus_1", "usageUnits": -3},
        ev("b1"),
        ev("b2", customerReferenceId="cus_auto"),
        ev(None, usageUnits="1.5"),
    ]
    r = await client.post(
        f"{API}/events/batch", json={"events": events}, headers=tenant.headers("client")
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    statuses = [x["status"] for x in data["results"]]
    assert statuses == ["accepted", "duplicate", "error", "duplicate", "accepted", "accepted"]
    assert [x["index"] for x in data["results"]] == list(range(6))
    assert data["results"][2]["error"]["field"] == "events[2].usageUnits"
    assert data["accepted"] == 3 and data["duplicates"] == 2 and data["errors"] == 1
    assert data["results"][4]["customerAutoCreated"] is True
    assert await count(ctx, Event) == 4
    async with ctx.db.reader() as s:
        used = await s.scalar(select(UsageCounter.used_q))
    assert used == 10000 + 20000 + 15000


async def test_batch_limits(ctx, client, tenant):
    h = tenant.headers("client")
    r = await client.post(f"{API}/events/batch", json={"events": []}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["field"] == "events"
    many = [ev(f"k{i}") for i in range(1001)]
    r = await client.post(f"{API}/events/batch", content=json.dumps({"events": many}), headers=h)
    assert r.status_code in (400, 413)
    r = await client.post(f"{API}/events/batch", json={"evts": []}, headers=h)
    assert r.status_code == 400

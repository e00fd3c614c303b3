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
    r = await client.post(
        f"{API}/events",
        content=b"[1,2]",
        headers={**tenant.headers("client"), "content-type": "application/json"},
    )
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
    r = await client.post(
        f"{API}/events/batch",
        content=json.dumps({"events": many}),
        headers={**h, "content-type": "application/json"},
    )
    assert r.status_code in (400, 413)
    r = await client.post(f"{API}/events/batch", json={"evts": []}, headers=h)
    assert r.status_code == 400


async def stored(ctx, key):
    async with ctx.db.reader() as s:
        return await s.scalar(select(Event).where(Event.idempotency_key == key))


async def test_cost_chain_and_revenue(ctx, client, tenant):
    """costAmount -> rule cost model -> environment default -> model price table -> none;
    revenue: revenueAmount -> the rule's price of the uncovered units."""
    env = tenant.env_ids["test"]
    simple = {
        "pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"},
        "cost": {"model": "simple", "cost_per_unit": "0.03"},
    }
    aware = {
        "pricing": {"model": "usage", "usage_unit_type": "tokens", "price_per_unit": "0.001"},
        "cost": {
            "model": "model_aware",
            "default_cost_per_unit": "0.00003",
            "model_costs": {"gpt-4": "0.00006"},
        },
    }
    tokens = {"cost": {"model": "simple", "cost_per_unit": 2, "cost_unit": "TOKENS"}}
    await metered_setup(
        ctx,
        env,
        rule=simple,
        extra_features={"aware": json.dumps(aware), "tok": json.dumps(tokens)},
    )
    assert (
        await post(
            client, tenant, ev("explicit", usageUnits=4, costAmount=0.5, revenueAmount="1.25")
        )
    ).status_code == 201
    await post(client, tenant, ev("rule", usageUnits=4))
    await post(
        client,
        tenant,
        ev(
            "aware",
            featureKey="aware",
            usageUnits=1000,
            costInput={"model": "gpt-4-0613", "inputTokens": 700, "outputTokens": 300},
        ),
    )
    await post(client, tenant, ev("tok", featureKey="tok", usageUnits=5))
    await post(
        client,
        tenant,
        ev(
            "table",
            featureKey="unpriced",
            usageUnits=1,
            costInput={"model": "claude-sonnet-4-5", "inputTokens": 3000, "outputTokens": 500},
        ),
    )
    await post(client, tenant, ev("none", featureKey="unpriced", usageUnits=1))
    e = await stored(ctx, "explicit")
    assert (e.cost_micros, e.cost_source, e.revenue_micros) == (500_000, "explicit", 1_250_000)
    e = await stored(ctx, "rule")
    assert (e.cost_micros, e.cost_source, e.revenue_micros) == (120_000, "rule", 400_000)
    e = await stored(ctx, "aware")
    # fuzzy model name: gpt-4-0613 -> gpt-4 rate; two-rate maths on tokens
    assert (e.cost_micros, e.cost_source) == (60_000, "rule")
    assert e.model == "gpt-4-0613" and (e.input_tokens, e.output_tokens) == (700, 300)
    e = await stored(ctx, "tok")
    # a cost counted in tokens is not money: kept out of cost_micros
    assert e.cost_micros is None and e.context["sys_cost_unit"] == "TOKENS"
    assert e.context["sys_cost_amount"] == 10
    e = await stored(ctx, "table")
    assert (e.cost_micros, e.cost_source, e.model_provider) == (
        16_500,
        "global_model_pricing",
        "anthropic",
    )
    assert e.subscription_id is None and e.revenue_micros is None
    e = await stored(ctx, "none")
    assert (e.cost_micros, e.cost_source) == (None, None)
    # an environment default cost config applies when the rule has no cost model
    from tanso_mcp.db.models import Environment

    async with ctx.db.unit_of_work() as s:
        envrow = await s.get(Environment, env)
        envrow.settings = {"defaultCostConfig": {"default_cost_per_unit": "0.002"}}
    await post(client, tenant, ev("default", featureKey="unpriced", usageUnits=10))
    e = await stored(ctx, "default")
    assert (e.cost_micros, e.cost_source) == (20_000, "account_default")


async def test_customer_identifiers_feature_id_meta_and_named_subscription(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env)
    async with ctx.db.reader() as s_:
        cust = await s_.scalar(select(Customer).where(Customer.reference_id == "cus_1"))
        feat = await s_.scalar(select(Feature).where(Feature.key == "api_calls"))
    body = {
        "eventIdempotencyKey": "by-id",
        "eventName": "x",
        "customerId": cust.id,
        "featureId": feat.id,
        "subscriptionId": s["subscription_id"],
        "usageUnits": "2.5",
        "meta": {"request": {"id": "r1", "tokens": [1, 2.5]}},
        "flowId": "flow-1",
        "entitlementId": "ent-1",
    }
    r = await post(client, tenant, body)
    assert r.status_code == 201, r.text
    e = await stored(ctx, "by-id")
    assert e.customer_id == cust.id and e.feature_id == feat.id
    assert e.subscription_id == s["subscription_id"] and e.usage_q == 25000
    assert e.meta == {"request": {"id": "r1", "tokens": [1, Decimal("2.5")]}}
    assert e.context["flowId"] == "flow-1" and e.context["entitlementId"] == "ent-1"
    r = await post(client, tenant, {**body, "eventIdempotencyKey": "missing", "customerId": "nope"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "customerId"
    r = await post(
        client,
        tenant,
        {
            "eventIdempotencyKey": "stripe",
            "eventName": "x",
            "stripeCustomerId": "cus_Stripe123",
            "featureKey": "api_calls",
        },
    )
    assert r.status_code == 201 and r.json()["data"]["customerAutoCreated"] is True
    async with ctx.db.reader() as s_:
        c = await s_.scalar(
            select(Customer).where(Customer.provider_customer_id == "cus_Stripe123")
        )
    assert c is not None and c.source == "EVENT_AUTO_CREATED"
    r = await post(
        client,
        tenant,
        {"eventIdempotencyKey": "stripe2", "eventName": "x", "stripeCustomerId": "cus_Stripe123"},
    )
    assert r.json()["data"]["customerAutoCreated"] is False
    assert await count(ctx, Customer) == 2


async def test_one_failing_request_does_not_fail_the_others(ctx, client, tenant, monkeypatch):
    """A unit that breaks the writer's transaction is written alone (and fails alone);
    the events of other requests in the same group commit are stored."""
    import asyncio

    from tanso_mcp.services.metering import batch, pgfast, writer

    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    real = batch.process_batch
    real_lane = pgfast.FastLane.write

    def flaky(tx, items, probe=True):
        if any(i.key == "poison" for i in items):
            raise RuntimeError("boom")
        return real(tx, items, probe=probe)

    async def flaky_lane(self, raw, items):  # PostgreSQL's one-statement lane
        if any(i.key == "poison" for i in items):
            raise RuntimeError("boom")
        return await real_lane(self, raw, items)

    monkeypatch.setattr(writer, "process_batch", flaky)
    monkeypatch.setattr(pgfast.FastLane, "write", flaky_lane)
    results = await asyncio.gather(
        *(post(client, tenant, ev(f"ok{i}")) for i in range(10)),
        post(client, tenant, ev("poison")),
        *(post(client, tenant, ev(f"ok{i}")) for i in range(10, 20)),
    )
    codes = [r.status_code for r in results]
    assert codes[10] == 400 and results[10].json()["error"]["code"] == "ingestion_failed"
    assert codes[:10] + codes[11:] == [201] * 20
    assert await count(ctx, Event) == 20


async def test_two_environments_in_one_group_commit(ctx, client, tenant):
    import asyncio

    from tests.conftest import make_tenant

    other = await make_tenant(ctx, "globex")
    for t in (tenant, other):
        await metered_setup(ctx, t.env_ids["test"])
    results = await asyncio.gather(
        *(
            post(client, t, ev(f"same-key-{i}", usageUnits=i + 1))
            for t in (tenant, other)
            for i in range(5)
        )
    )
    assert [r.status_code for r in results] == [201] * 10
    for t in (tenant, other):
        d = (await client.get(f"{API}/entitlements/cus_1/api_calls", headers=t.headers())).json()
        assert d["data"]["usage"]["used"] == 15
    assert await count(ctx, Event) == 10

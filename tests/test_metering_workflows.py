"""End to end: the seed's "Record usage" and "Simulate usage before committing" workflows
over MCP (in-memory and real Streamable HTTP), and the seed's /api/chat example over REST
(check -> work -> track), on a catalog and subscription created through the product's
own APIs."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select

from tanso_mcp.db.models import Event
from tests.billing_helpers import Billing
from tests.mcp_helpers import fails, http_client, inmemory, live_server, ok

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal

CHAT_RULE = {
    "pricing": {
        "model": "usage",
        "usage_unit_type": "tokens",
        "price_per_unit": "0.00002",
        "max_usage": 10000,
    }
}


async def catalog(client, *, rule=CHAT_RULE, feature="ai_chat") -> str:
    """The seed's "Set up a product catalog" workflow; returns the plan id."""
    f = await ok(client, "adminCreateFeature", {"name": "AI chat", "key": feature})
    plan = await ok(
        client,
        "adminCreatePlan",
        {
            "key": "pro",
            "name": "Pro",
            "priceAmount": "49.00",
            "description": "Pro plan",
            "billingTiming": "IN_ARREARS",
        },
    )
    plan_id = plan["plan"]["id"]
    await ok(
        client,
        "adminLinkFeatureToPlan",
        {
            "planId": plan_id,
            "featureId": f["feature"]["id"],
            "type": "BASE",
            "valueJson": json.dumps(rule),
        },
    )
    await ok(client, "adminUpdatePlan", {"planId": plan_id, "status": "ACTIVE"})
    return plan_id


async def onboard(client, plan_id: str, ref: str = "user_42") -> str:
    await ok(client, "createCustomer", {"customerReferenceId": ref, "email": f"{ref}@x.io"})
    sub = await ok(client, "createSubscription", {"customerReferenceId": ref, "planId": plan_id})
    return sub["subscription"]["id"]


async def record_usage_workflow(client):
    plan_id = await catalog(client)
    await onboard(client, plan_id)
    # 1. checkEntitlement — confirm the customer has quota remaining
    before = await ok(
        client, "checkEntitlement", {"customerReferenceId": "user_42", "featureKey": "ai_chat"}
    )
    assert before["allowed"] is True and before["isAllowed"] is True
    assert before["usage"] == {"used": 0, "limit": 10000, "remaining": 10000}
    # 2. ingestEvent — record the usage
    args = {
        "eventIdempotencyKey": "evt_abc123",
        "eventName": "chat_completion",
        "occurredAt": "2026-01-15T09:30:00Z",
        "customerReferenceId": "user_42",
        "featureKey": "ai_chat",
        "usageUnits": "1500",
    }
    done = await ok(client, "ingestEvent", args)
    assert done["success"] is True and done["eventId"]
    assert done["usageLimitExceeded"] is False
    # the same key again: duplicate_event, nothing changes
    err = await fails(client, "ingestEvent", args)
    assert err["error"] == "duplicate_event"
    after = await ok(
        client, "checkEntitlement", {"customerReferenceId": "user_42", "featureKey": "ai_chat"}
    )
    assert after["usage"] == {"used": 1500, "limit": 10000, "remaining": 8500}
    listed = await ok(client, "listCustomerEntitlements", {"customerReferenceId": "user_42"})
    assert listed["items"][0]["entitlements"][0]["usage"]["used"] == 1500
    # bad input is an MCP error naming the field, not a crash
    bad = await fails(
        client, "ingestEvent", {**args, "eventIdempotencyKey": "x", "usageUnits": "-5"}
    )
    assert bad["error"] == "invalid_request"


async def simulate_usage_workflow(client):
    # 1. evaluateEntitlement — would the proposed usage be allowed?
    sim = await ok(
        client,
        "evaluateEntitlement",
        {"customerReferenceId": "user_42", "featureKey": "ai_chat", "requestedUsage": "8000"},
    )
    assert sim["allowed"] is True
    assert sim["simulation"] == {
        "requestedUsage": 8000,
        "projectedUsage": 9500,
        "projectedRemaining": 500,
        "wouldExceedLimit": False,
    }
    # 2. if allowed, ingestEvent
    await ok(
        client,
        "ingestEvent",
        {
            "eventIdempotencyKey": "evt_sim_1",
            "eventName": "chat_completion",
            "occurredAt": "2026-01-15T09:45:00Z",
            "customerReferenceId": "user_42",
            "featureKey": "ai_chat",
            "usageUnits": 8000,
        },
    )
    sim = await ok(
        client,
        "evaluateEntitlement",
        {"customerReferenceId": "user_42", "featureKey": "ai_chat", "requestedUsage": 600},
    )
    assert sim["allowed"] is False and sim["simulation"]["wouldExceedLimit"] is True
    # evaluation never consumed anything
    check = await ok(
        client, "checkEntitlement", {"customerReferenceId": "user_42", "featureKey": "ai_chat"}
    )
    assert check["usage"]["used"] == 9500
    unknown = await ok(
        client, "checkEntitlement", {"customerReferenceId": "nobody", "featureKey": "ai_chat"}
    )
    assert unknown["allowed"] is False and unknown["reason"]


async def test_record_and_simulate_usage_over_mcp_in_memory(ctx, tenant):
    async with inmemory(ctx, tenant.key("admin")) as client:
        await record_usage_workflow(client)
        await simulate_usage_workflow(client)
    async with ctx.db.reader() as s:
        kinds = [e.event_type for e in (await s.execute(select(Event))).scalars()]
    assert kinds.count("CLIENT_TRACKED") == 2 and kinds.count("ENTITLEMENT_CHECKED") == 2


async def test_record_and_simulate_usage_over_streamable_http(ctx, tenant):
    async with live_server(ctx) as base:
        async with http_client(base, tenant.key("admin")) as client:
            await record_usage_workflow(client)
            await simulate_usage_workflow(client)


async def test_read_key_sees_checks_but_cannot_ingest(ctx, tenant):
    async with inmemory(ctx, tenant.key("admin")) as admin:
        plan_id = await catalog(admin)
        await onboard(admin, plan_id)
    async with inmemory(ctx, tenant.key("read")) as reader:
        tools = {t.name for t in (await reader.list_tools()).tools}
        assert {"checkEntitlement", "listCustomerEntitlements", "evaluateEntitlement"} <= tools
        assert "ingestEvent" not in tools
        err = await fails(
            reader,
            "ingestEvent",
            {
                "eventIdempotencyKey": "k",
                "eventName": "x",
                "occurredAt": "2026-01-15T09:30:00Z",
                "customerReferenceId": "user_42",
                "featureKey": "ai_chat",
            },
        )
        assert err["error"] == "forbidden"


async def test_api_chat_example_over_rest(ctx, client, tenant):
    """The seed's Express handler: check before serving, 403 when not allowed, then report
    the usage (with costInput) after the model call."""
    async with inmemory(ctx, tenant.key("admin")) as admin:
        plan_id = await catalog(admin)
    b = Billing(ctx, client, tenant)
    await b.customer("user_42")
    await b.subscribe("user_42", plan_id)
    headers = tenant.headers("client")

    async def api_chat(request_tokens: int, completion_tokens: int) -> tuple[int, dict]:
        entitlement = (
            await client.get(f"{API}/entitlements/user_42/ai_chat", headers=headers)
        ).json()
        if not entitlement["data"]["isAllowed"]:
            return 403, {"error": "Usage limit reached", "usage": entitlement["data"]["usage"]}
        # ... the model call happens here ...
        r = await client.post(
            f"{API}/events",
            headers=headers,
            json={
                "eventName": "chat_completion",
                "customerReferenceId": "user_42",
                "featureKey": "ai_chat",
                "costInput": {
                    "model": "gpt-4o",
                    "modelProvider": "openai",
                    "inputTokens": request_tokens,
                    "outputTokens": completion_tokens,
                },
                "usageUnits": request_tokens + completion_tokens,
            },
        )
        assert r.status_code in (200, 201), r.text
        return 200, {"ok": True}

    assert await api_chat(3000, 500) == (200, {"ok": True})
    async with ctx.db.reader() as s:
        e = await s.scalar(select(Event))
    # gpt-4o list price on 2026-01-15: $2.50 in / $10.00 out per million tokens
    assert e.cost_micros == 12_500 and e.cost_source == "global_model_pricing"
    assert e.model == "gpt-4o" and e.model_provider == "openai"
    assert (e.input_tokens, e.output_tokens) == (3000, 500)
    assert e.revenue_micros == 70_000  # 3500 tokens x 0.00002 = 0.07
    # use up the quota: the call that crosses the line is recorded in full, then 403
    assert (await api_chat(4000, 2500))[0] == 200
    status, body = await api_chat(10, 10)
    assert status == 403
    assert body["usage"] == {"used": 10000, "limit": 10000, "remaining": 0}

"""The catalog through MCP: the seed's "Set up a product catalog" workflow, catalog
rules and bad input, then REST clients seeing the result; over the in-memory client,
real Streamable HTTP (both protocol eras) and stdio."""

from __future__ import annotations

import json
import os
import sys

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Feature, Plan, PlanFeature
from tests.mcp_helpers import call, fails, http_client, inmemory, live_server, ok

pytestmark = pytest.mark.anyio

SEED_EXAMPLES = {
    "gate": None,
    "capped": '{"pricing":{"model":"usage","price_per_unit":0.10,"usage_unit_type":"api_calls",'
    '"max_usage":10000}}',
    "graduated": '{"pricing":{"model":"graduated","usage_unit_type":"api_calls",'
    '"reset_mode":"accumulate","tiers":[{"up_to":100,"price_per_unit":0.10,'
    '"flat_fee":5.00},{"up_to":"inf","price_per_unit":0.05}]}}',
    "simple_cost": '{"pricing":{"model":"usage","price_per_unit":0.10,"usage_unit_type":'
    '"api_calls"},"cost":{"model":"simple","cost_per_unit":0.03,'
    '"cost_unit":"CURRENCY"}}',
    "model_cost": '{"pricing":{"model":"usage","price_per_unit":0.01,"usage_unit_type":'
    '"api_calls"},"cost":{"model":"model_aware","default_cost_per_unit":0.00003,'
    '"model_costs":{"gpt-4":0.00006,"claude-3-opus":0.000075},'
    '"cost_unit":"CURRENCY"}}',
}


async def _count(ctx, model) -> int:
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model)))


async def build_catalog(client) -> dict:
    features = {}
    for key in SEED_EXAMPLES:
        f = await ok(client, "adminCreateFeature", {"name": key.title(), "key": key})
        assert f["success"] is True
        features[key] = f["feature"]["id"]
    plan = await ok(
        client, "adminCreatePlan", {"key": "pro_tier", "name": "Pro Tier", "priceAmount": "99.00"}
    )
    assert plan["success"] is True
    assert plan["plan"]["status"] == "DRAFT" and plan["plan"]["intervalMonths"] == 1
    assert plan["plan"]["billingTiming"] == "IN_ADVANCE"
    plan_id = plan["plan"]["id"]
    # activation needs a description and a feature
    err = await fails(client, "adminUpdatePlan", {"planId": plan_id, "status": "ACTIVE"})
    assert err["error"] == "invalid_request"
    for key, value in SEED_EXAMPLES.items():
        args = {"planId": plan_id, "featureId": features[key], "type": "BASE"}
        if value is not None:
            args["valueJson"] = value
        rule = await ok(client, "adminLinkFeatureToPlan", args)
        assert rule["rule"]["featureKey"] == key
    await ok(client, "adminUpdatePlan", {"planId": plan_id, "description": "For pros"})
    active = await ok(client, "adminUpdatePlan", {"planId": plan_id, "status": "ACTIVE"})
    assert active["plan"]["status"] == "ACTIVE"
    return {"plan_id": plan_id, "features": features}


async def test_seed_catalog_workflow_then_rest_sees_the_plan(ctx, client, tenant):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        cat = await build_catalog(mcp)
        full = await ok(mcp, "adminGetPlanWithFeatures", {"planId": cat["plan_id"]})
        by_key = {f["key"]: f for f in full["features"]}
        assert by_key["gate"]["pricingType"] == "included"
        assert by_key["capped"]["pricing"]["maxUsage"] == 10000
        assert by_key["graduated"]["pricing"]["resetMode"] == "accumulate"
        assert by_key["graduated"]["pricing"]["tiers"][0]["flatFee"] == 5
        assert by_key["model_cost"]["rule"]["value"]["cost"]["model_costs"]["gpt-4"] == 0.00006
        rule = await ok(
            mcp,
            "adminGetFeatureRule",
            {"planId": cat["plan_id"], "featureId": cat["features"]["simple_cost"]},
        )
        expected = json.loads(SEED_EXAMPLES["simple_cost"])
        expected["pricing"]["reset_mode"] = "reset"  # normalised on save
        assert rule["value"] == expected
        listed = await ok(mcp, "listPlans")
        assert [p["plan"]["key"] for p in listed["items"]] == ["pro_tier"]
        assert len((await ok(mcp, "adminListFeatures"))["items"]) == 5
        assert (await ok(mcp, "getFeature", {"featureKey": "capped"}))["name"] == "Capped"
    r = await client.get("/api/v1/client/plans", headers=tenant.headers("read"))
    (item,) = r.json()["data"]
    assert item["plan"]["id"] == cat["plan_id"] and item["plan"]["priceAmount"] == 99
    assert len(item["features"]) == 5


async def test_plan_rules_locks_and_transitions(ctx, tenant):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        cat = await build_catalog(mcp)
        pid = cat["plan_id"]
        for args, field in [
            ({"priceAmount": "10"}, "priceAmount"),
            ({"key": "other"}, "key"),
            ({"intervalMonths": 3}, "intervalMonths"),
            ({"billingTiming": "IN_ARREARS"}, "billingTiming"),
            ({"status": "DRAFT"}, "status"),
        ]:
            err = await fails(mcp, "adminUpdatePlan", {"planId": pid, **args})
            assert (err["error"], err["field"]) == ("invalid_request", field), err
        await ok(mcp, "adminUpdatePlan", {"planId": pid, "name": "Pro 2"})  # allowed
        await ok(mcp, "adminUpdatePlan", {"planId": pid, "status": "ARCHIVED"})
        err = await fails(mcp, "adminUpdatePlan", {"planId": pid, "name": "x"})
        assert err["field"] == "name"
        await ok(mcp, "adminUpdatePlan", {"planId": pid, "status": "ACTIVE"})
        draft = await ok(mcp, "adminCreatePlan", {"key": "d", "name": "D", "priceAmount": 5})
        err = await fails(
            mcp, "adminUpdatePlan", {"planId": draft["plan"]["id"], "status": "ARCHIVED"}
        )
        assert err["field"] == "status"
        # a DRAFT plan is fully editable
        edited = await ok(
            mcp,
            "adminUpdatePlan",
            {
                "planId": draft["plan"]["id"],
                "priceAmount": "7.50",
                "intervalMonths": "3",
                "billingTiming": "IN_ARREARS",
            },
        )
        assert edited["plan"]["priceAmount"] == 7.5 and edited["plan"]["intervalMonths"] == 3
        plans = await ok(mcp, "adminListPlans")
        assert {p["key"] for p in plans["items"]} == {"pro_tier", "d"}


@pytest.mark.parametrize(
    "value, field",
    [
        ("{not json", "valueJson"),
        (
            '{"pricing":{"model":"flat","price_per_unit":1,"usage_unit_type":"x"}}',
            "valueJson.pricing.model",
        ),
        (
            '{"pricing":{"model":"usage","price_per_unit":-1,"usage_unit_type":"x"}}',
            "valueJson.pricing.price_per_unit",
        ),
        (
            '{"pricing":{"model":"graduated","usage_unit_type":"x","tiers":[{"up_to":100,'
            '"price_per_unit":1},{"up_to":50,"price_per_unit":1},{"up_to":"inf","price_per_unit":1}]}}',
            "valueJson.pricing.tiers[1].up_to",
        ),
        (
            '{"pricing":{"model":"usage","price_per_unit":1,"usage_unit_type":"x"},'
            '"cost":{"model":"magic"}}',
            "valueJson.cost.model",
        ),
    ],
)
async def test_invalid_rules_are_rejected_and_nothing_is_written(ctx, tenant, value, field):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        f = await ok(mcp, "adminCreateFeature", {"name": "F", "key": "f"})
        p = await ok(mcp, "adminCreatePlan", {"key": "p", "name": "P", "priceAmount": "1"})
        err = await fails(
            mcp,
            "adminLinkFeatureToPlan",
            {"planId": p["plan"]["id"], "featureId": f["feature"]["id"], "valueJson": value},
        )
        assert err["error"] == "invalid_request" and err["field"] == field, err
    assert await _count(ctx, PlanFeature) == 0


async def test_bad_arguments_and_unknown_ids(ctx, tenant):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        err = await fails(mcp, "adminCreatePlan", {"key": "p", "name": "P", "priceAmount": "ten"})
        assert (err["error"], err["field"]) == ("invalid_request", "priceAmount")
        err = await fails(mcp, "adminCreatePlan", {"key": "p", "name": "P", "priceAmount": "1.234"})
        assert err["field"] == "priceAmount"
        err = await fails(mcp, "adminCreatePlan", {"key": "p", "name": "P", "priceAmount": "-1"})
        assert err["field"] == "priceAmount"
        err = await fails(
            mcp,
            "adminCreatePlan",
            {"key": "p", "name": "P", "priceAmount": 1, "intervalMonths": "0"},
        )
        assert err["field"] == "intervalMonths"
        err = await fails(
            mcp, "adminCreatePlan", {"key": "bad key!", "name": "P", "priceAmount": 1}
        )
        assert err["field"] == "key"
        err = await fails(
            mcp,
            "adminCreatePlan",
            {
                "key": "p",
                "name": "P",
                "priceAmount": 1,
                "creditAllocations": '[{"denomination":"AI","creditAmount":-5}]',
            },
        )
        assert err["field"] == "creditAllocations[0].creditAmount"
        assert await _count(ctx, Plan) == 0
        err = await fails(mcp, "adminGetPlanWithFeatures", {"planId": "nope"})
        assert err["error"] == "not_found"
        err = await fails(mcp, "adminUpdateFeature", {"featureId": "nope", "name": "x"})
        assert err["error"] == "not_found"
        await ok(mcp, "adminCreateFeature", {"name": "A", "key": "a"})
        err = await fails(mcp, "adminCreateFeature", {"name": "A", "key": "a"})
        assert err["error"] == "invalid_request" and err["reason"] == "conflict"
        assert await _count(ctx, Feature) == 1
        err = await fails(mcp, "getCustomer", {"customerReferenceId": "ghost"})
        assert err["error"] == "not_found"


async def test_unlink_needs_confirmation_with_a_preview(ctx, tenant):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        cat = await build_catalog(mcp)
        args = {"planId": cat["plan_id"], "featureId": cat["features"]["gate"]}
        err = await fails(mcp, "adminUnlinkFeatureFromPlan", args)
        assert err["error"] == "confirmation_required"
        assert err["preview"]["entitlementsLost"]["featureKey"] == "gate"
        assert await _count(ctx, PlanFeature) == 5
        await ok(mcp, "adminUnlinkFeatureFromPlan", {**args, "confirmAction": True})
        assert await _count(ctx, PlanFeature) == 4
        err = await fails(mcp, "adminGetFeatureRule", args)
        assert err["error"] == "not_found"


async def test_customer_tools(ctx, tenant):
    async with inmemory(ctx, tenant.key("client")) as mcp:
        c = await ok(
            mcp,
            "createCustomer",
            {"customerReferenceId": "user_abc123", "email": "a@example.com", "firstName": "A"},
        )
        assert c["success"] is True
        c = c["customer"]
        assert c["customerReferenceId"] == "user_abc123" and c["subscriptions"] == []
        u = await ok(
            mcp, "updateCustomer", {"customerReferenceId": "user_abc123", "phoneNumber": "+1 555"}
        )
        assert u["customer"]["phoneNumber"] == "+1 555" and u["customer"]["firstName"] == "A"
        err = await fails(
            mcp, "createCustomer", {"customerReferenceId": "user_abc123", "email": "a@example.com"}
        )
        assert err["reason"] == "conflict"
        err = await fails(mcp, "createCustomer", {"customerReferenceId": "x", "email": "nope"})
        assert err["field"] == "email"
        err = await fails(mcp, "adminCreateFeature", {"name": "A", "key": "a"})
        assert err["error"] == "forbidden"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_real_http_both_protocol_eras(ctx, tenant, mode):
    async with live_server(ctx) as base:
        async with http_client(base, tenant.key("admin"), mode) as mcp:
            names = {t.name for t in (await mcp.list_tools()).tools}
            assert len(names) == 34
            await build_catalog(mcp)
            await ok(mcp, "createCustomer", {"customerReferenceId": "u1", "email": "u@x.io"})
        async with http_client(base, tenant.key("read"), mode) as mcp:
            assert len((await mcp.list_tools()).tools) == 13
            assert (await ok(mcp, "getCustomer", {"customerReferenceId": "u1"}))[
                "email"
            ] == "u@x.io"
            is_error, err = await call(
                mcp, "createCustomer", {"customerReferenceId": "u2", "email": "u@x.io"}
            )
            assert is_error and err["error"] == "forbidden"
        async with http_client(base, tenant.key("client"), mode) as mcp:
            assert len((await mcp.list_tools()).tools) == 20
        async with http_client(base, tenant.key("read", "live"), mode) as mcp:
            # the live environment is another world
            err = await fails(mcp, "getCustomer", {"customerReferenceId": "u1"})
            assert err["error"] == "not_found"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def test_http_without_a_key_is_401(ctx, tenant):
    """A missing or unknown key: HTTP 401 with a Bearer challenge (``invalid_token`` only
    when a key was sent) and a JSON-RPC error carrying our message, which the Python SDK
    client raises as an ``MCPError`` (a REST-shaped body would reach it only as "Server
    returned an error response")."""
    import httpx
    from mcp import MCPError

    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    cases = (
        (None, "missing API key: send X-API-Key or Authorization: Bearer", ""),
        ("sk_test_bad", "invalid or revoked API key", ', error="invalid_token"'),
    )
    async with live_server(ctx) as base:
        async with httpx.AsyncClient() as http:
            for key, message, challenge in cases:
                headers = {**accept, **({"X-API-Key": key} if key else {})}
                r = await http.post(f"{base}/mcp", json=init, headers=headers)
                assert r.status_code == 401
                assert r.headers["www-authenticate"] == 'Bearer realm="tanso-mcp"' + challenge
                assert r.json() == {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {
                        "code": -32600,
                        "message": message,
                        "data": {"code": "unauthorized", "message": message, "field": "X-API-Key"},
                    },
                }
            # the REST API keeps its own envelope
            r = await http.get(f"{base}/api/v1/client/plans", headers={"X-API-Key": "sk_test_bad"})
            assert r.status_code == 401
            assert r.json()["error"] == {
                "code": "unauthorized",
                "message": "invalid or revoked API key",
                "field": "X-API-Key",
            }
        for key, message, _ in cases:
            with pytest.raises(BaseException) as raised:
                async with http_client(base, key) as mcp:
                    await mcp.list_tools()
            errors = [e for e in _leaves(raised.value) if isinstance(e, MCPError)]
            assert [e.error.message for e in errors] == [message], raised.value
            assert errors[0].error.data["code"] == "unauthorized"


async def test_stdio_server_process(ctx, tenant, settings):
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("TANSO_")}
    env.update(TANSO_DATABASE_URL=settings.database_url, TANSO_API_KEY=tenant.key("admin"))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "tanso_mcp.cli", "stdio"], env=env
    )
    async with Client(stdio_client(params), mode="legacy") as mcp:
        assert len((await mcp.list_tools()).tools) == 34
        f = await ok(mcp, "adminCreateFeature", {"name": "Via stdio", "key": "stdio_f"})
        assert f["feature"]["key"] == "stdio_f"
    async with ctx.db.reader() as s:
        assert await s.scalar(select(Feature.name).where(Feature.key == "stdio_f")) == "Via stdio"

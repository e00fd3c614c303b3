"""Every answer matches what it declares: one workflow touching every implemented MCP
tool (over Streamable HTTP and over stdio, through the real server) and every REST
endpoint, each answer validated against its declared schema with undeclared fields
forbidden in the test's copy.

MCP: the schema served in ``tools/list`` must be the one generated from the answer model;
each successful ``structuredContent`` must match the model's strict schema (all fields
declared, required ones present). REST: each 2xx body must match the response schema
/openapi.json documents for that operation. (``tests/schema_guard.py`` applies the same
checks to every answer of every other test.)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tanso_mcp.tools.groups import OPTIONAL_GROUPS, all_specs_by_name, enabled_specs
from tanso_mcp.tools.registry import all_handlers
from tanso_mcp.tools.specs import output_schema, strict_output_schema
from tanso_mcp.web.app import client_api
from tests.mcp_helpers import http_client, live_server
from tests.schema_guard import closed

pytestmark = pytest.mark.anyio

ALLOC = '[{"denomination": "AI_TOKENS", "creditAmount": 500, "hardLimit": false}]'
USAGE = json.dumps(
    {"pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": 0.01}}
)
# the Stripe tools that call Stripe need a (fake) Stripe account: tests/test_stripe_*.py
# call them over MCP, and the schema guard checks each of their answers there; the status,
# the key registration and the usage reconciliation answer without Stripe and are called here
STRIPE_TOOLS = {
    spec.name
    for spec in enabled_specs(OPTIONAL_GROUPS)
    if spec.capability == "the Stripe integration"
} - {"getStripeIntegrationStatus", "registerStripeApiKey", "getStripeUsageReconciliation"}
# every tool group is enabled: the optional tools answer typed models too
IMPLEMENTED = (
    {spec.name for spec in enabled_specs(OPTIONAL_GROUPS)} & set(all_handlers())
) - STRIPE_TOOLS
GROUPS_JSON = json.dumps(list(OPTIONAL_GROUPS))

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def _check(schema: dict[str, Any], value: Any, what: str) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}"
        for e in Draft202012Validator(closed(schema)).iter_errors(value)
    ]
    assert not errors, (what, errors[:5])


async def mcp_workflow(call: Call, ref: str) -> None:
    """The seed's workflows plus the testing group: every implemented tool at least once."""
    api = await call("adminCreateFeature", {"name": "API calls", "key": f"calls_{ref}"})
    gate = await call("adminCreateFeature", {"name": "SSO", "key": f"sso_{ref}"})
    await call("adminUpdateFeature", {"featureId": gate["feature"]["id"], "name": "Single sign-on"})
    plans = {}
    for key, price, timing in (("basic", "10.00", "IN_ARREARS"), ("pro", "99.00", "IN_ADVANCE")):
        created = await call(
            "adminCreatePlan",
            {
                "key": f"{key}_{ref}",
                "name": key.title(),
                "priceAmount": price,
                "billingTiming": timing,
                "creditAllocations": ALLOC,
            },
        )
        plans[key] = plan_id = created["plan"]["id"]
        link = {"planId": plan_id, "featureId": api["feature"]["id"], "type": "BASE"}
        await call("adminLinkFeatureToPlan", {**link, "valueJson": USAGE})
        await call("adminUpdateFeatureRule", {**link, "isEnabled": True})
        await call("adminGetFeatureRule", {"planId": plan_id, "featureId": api["feature"]["id"]})
        await call("adminUpdatePlan", {"planId": plan_id, "description": f"The {key} plan"})
    await call(
        "adminLinkFeatureToPlan", {"planId": plans["pro"], "featureId": gate["feature"]["id"]}
    )
    for plan_id in plans.values():
        await call("adminUpdatePlan", {"planId": plan_id, "status": "ACTIVE"})
    await call("adminGetPlanWithFeatures", {"planId": plans["pro"]})
    for tool in ("adminListPlans", "adminListFeatures", "listPlans", "listFeatures"):
        await call(tool, {})
    await call("getFeature", {"featureKey": f"calls_{ref}"})

    customer = f"cust_{ref}"
    await call("createCustomer", {"customerReferenceId": customer, "email": f"{ref}@x.io"})
    await call("updateCustomer", {"customerReferenceId": customer, "firstName": "Ada"})
    sub = await call(
        "createSubscription", {"customerReferenceId": customer, "planId": plans["pro"]}
    )
    assert sub["invoice"]["customerReferenceId"] == customer  # as listCustomerInvoices says
    await call("markInvoicePaid", {"invoiceId": sub["invoice"]["id"], "confirmAction": True})
    who = {"customerReferenceId": customer, "featureKey": f"calls_{ref}"}
    await call("checkEntitlement", who)
    await call("listCustomerEntitlements", {"customerReferenceId": customer})
    await call("evaluateEntitlement", {**who, "requestedUsage": "5"})
    await call(
        "ingestEvent",
        {
            **who,
            "eventIdempotencyKey": f"evt_{ref}",
            "eventName": "api_call",
            "occurredAt": (await call("getTestClock", {}))["now"],
            "usageUnits": 3,
        },
    )
    await call("listCustomerInvoices", {"customerReferenceId": customer})
    pools = (await call("getCreditPools", {"customerReferenceId": customer}))["items"]
    await call("getCreditBalance", {"customerReferenceId": customer, "poolId": pools[0]["id"]})
    sub_id = sub["subscription"]["id"]
    await call(
        "changeSubscriptionPlan",
        {
            "subscriptionId": sub_id,
            "newPlanId": plans["basic"],
            "changeType": "DOWNGRADE",
            "confirmAction": True,
        },
    )
    await call(
        "cancelSubscription",
        {"subscriptionId": sub_id, "cancelMode": "END_OF_PERIOD", "confirmAction": True},
    )
    await call("getCustomer", {"customerReferenceId": customer})
    await call(
        "adminUnlinkFeatureFromPlan",
        {"planId": plans["pro"], "featureId": gate["feature"]["id"], "confirmAction": True},
    )
    await call("setTestClockFrozen", {"frozen": True})
    await call("advanceTestClock", {"seconds": 60})
    await call("setTestClockFrozen", {"frozen": False})
    await call("getStripeIntegrationStatus", {})
    await call(
        "registerStripeApiKey", {"stripeApiKey": "sk_test_answer_1234", "confirmAction": True}
    )
    await call("getStripeUsageReconciliation", {"period": "previous"})

    # the analytics group
    await call("getMarginSummary", {"groupBy": "feature", "limit": 5})
    await call("getCustomerMargin", {"customerReferenceId": customer})
    await call("getMarginTimeseries", {"interval": "day", "groupBy": "customer"})
    await call(
        "updateCostSettings",
        {
            "defaultCostConfigJson": json.dumps(
                {"default_cost_per_unit": 0.000002, "model_costs": {"m-1": {"input": 1e-6}}}
            ),
            "modelPriceOverridesJson": json.dumps(
                [
                    {
                        "provider": "acme",
                        "model": "acme-1",
                        "inputPricePerMillion": 1,
                        "outputPricePerMillion": 2,
                    }
                ]
            ),
        },
    )
    await call("getCostSettings", {})
    await call("listModelPrices", {})
    await call(
        "updateMarginAlertSettings",
        {"settingsJson": json.dumps({"threshold": 0.5, "customers": {customer: 0.6}})},
    )
    await call("getMarginAlertSettings", {})
    await call("listMarginAlerts", {})


def _mcp_caller(client, listed: dict[str, Any], seen: set[str]) -> Call:
    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(name, args)
        data = result.structured_content
        assert not result.is_error, (name, data)
        assert json.loads(result.content[0].text) == data
        spec = all_specs_by_name()[name]
        # what the server declares is what the answer model generates…
        assert listed[name] == output_schema(spec), name
        # …and the answer matches it exactly
        _check(strict_output_schema(spec), data, name)
        seen.add(name)
        return data

    return call


async def test_every_tool_over_streamable_http(ctx, tenant, monkeypatch):
    monkeypatch.setattr(ctx.settings, "mcp_tool_groups", list(OPTIONAL_GROUPS))
    seen: set[str] = set()
    async with live_server(ctx) as base, http_client(base, tenant.key("admin")) as client:
        listed = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        await mcp_workflow(_mcp_caller(client, listed, seen), "http")
    assert seen == IMPLEMENTED


async def test_every_tool_over_stdio(ctx, tenant, settings):
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("TANSO_")}
    env.update(
        TANSO_DATABASE_URL=settings.database_url,
        TANSO_API_KEY=tenant.key("admin"),
        TANSO_MCP_TOOL_GROUPS=GROUPS_JSON,
    )
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "tanso_mcp.cli", "stdio"], env=env
    )
    seen: set[str] = set()
    async with Client(stdio_client(params), mode="legacy") as client:
        listed = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        await mcp_workflow(_mcp_caller(client, listed, seen), "stdio")
    assert seen == IMPLEMENTED


# --------------------------------------------------------------------------- REST


def _operations(doc: dict[str, Any]):
    """(method, path template) -> the 2xx response schema, self-contained."""
    defs = doc["components"]["schemas"]
    out = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op.get("responses", {}).items():
                if status.startswith("2") and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    text = json.dumps({**schema, "$defs": defs})
                    out[(method.upper(), path)] = json.loads(
                        text.replace("#/components/schemas/", "#/$defs/")
                    )
    return out


async def test_every_endpoint_answers_what_openapi_declares(ctx, tenant, client):
    # the catalog comes from the admin tools (there is no catalog REST API)
    from tests.mcp_helpers import inmemory

    async with inmemory(ctx, tenant.key("admin")) as mcp:

        async def admin(name: str, args: dict[str, Any]) -> dict[str, Any]:
            result = await mcp.call_tool(name, args)
            assert not result.is_error, (name, result.structured_content)
            return result.structured_content

        api = await admin("adminCreateFeature", {"name": "Calls", "key": "calls"})
        plans = {}
        for key, price, timing in (("basic", "10", "IN_ARREARS"), ("pro", "99", "IN_ADVANCE")):
            plan = await admin(
                "adminCreatePlan",
                {
                    "key": key,
                    "name": key,
                    "description": key,
                    "priceAmount": price,
                    "billingTiming": timing,
                    "creditAllocations": ALLOC,
                },
            )
            plans[key] = plan["plan"]["id"]
            link = {"planId": plans[key], "featureId": api["feature"]["id"], "valueJson": USAGE}
            await admin("adminLinkFeatureToPlan", link)
            await admin("adminUpdatePlan", {"planId": plans[key], "status": "ACTIVE"})

    doc = (await client.get("/openapi.json")).json()
    schemas = _operations(doc)
    seen: set[tuple[str, str]] = set()
    h = tenant.headers("admin")

    async def rest(method: str, template: str, path: str, **kw) -> Any:
        r = await client.request(method, f"/api/v1/client{path}", headers=h, **kw)
        assert 200 <= r.status_code < 300, (method, path, r.status_code, r.text)
        key = (method, f"/api/v1/client{template}")
        assert key in schemas, f"{key} is not documented in /openapi.json"
        _check(schemas[key], r.json(), f"{method} {template}")
        seen.add(key)
        return r.json().get("data")

    await rest("POST", "/customers", "/customers", json={"customerReferenceId": "r1"})
    await rest("POST", "/customers", "/customers", json={"customerReferenceId": "r2"})
    await rest("GET", "/customers/{ref}", "/customers/r1")
    await rest("PATCH", "/customers/{ref}", "/customers/r1", json={"firstName": "Ada"})
    await rest("GET", "/plans", "/plans")
    await rest("GET", "/features", "/features")
    await rest("GET", "/features/{key}", "/features/calls")
    s1 = await rest(
        "POST",
        "/subscriptions",
        "/subscriptions",
        json={"customerReferenceId": "r1", "planId": plans["basic"]},
    )
    s2 = await rest(
        "POST",
        "/subscriptions",
        "/subscriptions",
        json={"customerReferenceId": "r2", "planId": plans["pro"]},
    )
    sub1, sub2 = s1["subscription"]["id"], s2["subscription"]["id"]
    await rest("GET", "/subscriptions/{id}", f"/subscriptions/{sub1}")
    invoice = s2["invoice"]["id"]
    await rest("GET", "/billing/invoice/{invoiceId}", f"/billing/invoice/{invoice}")
    await rest(
        "POST", "/billing/invoices/{invoiceId}/mark-paid", f"/billing/invoices/{invoice}/mark-paid"
    )
    await rest("GET", "/billing/invoices/{ref}", "/billing/invoices/r2")
    event = {"eventName": "api_call", "customerReferenceId": "r1", "featureKey": "calls"}
    await rest("POST", "/events", "/events", json={**event, "eventIdempotencyKey": "e1"})
    await rest("POST", "/events/batch", "/events/batch", json={"events": [event, event]})
    await rest("GET", "/entitlements/{ref}/{featureKey}", "/entitlements/r1/calls")
    await rest("GET", "/entitlements/{ref}", "/entitlements/r1")
    ask = {"customerReferenceId": "r1", "featureKey": "calls", "track": {"usageUnits": 2}}
    await rest("POST", "/entitlements", "/entitlements", json=ask)
    await rest("POST", "/entitlements/check", "/entitlements/check", json=ask)
    pools = await rest("GET", "/credits/{ref}/pools", "/credits/r1/pools")
    pool = pools[0]["id"]
    await rest("GET", "/credits/{ref}/pools/{poolId}", f"/credits/r1/pools/{pool}")
    await rest(
        "POST",
        "/credits/{ref}/grants",
        "/credits/r1/grants",
        json={"denomination": "AI_TOKENS", "amount": 50, "idempotencyKey": "top-1"},
    )
    await rest("GET", "/credits/{ref}/pools/{poolId}/grants", f"/credits/r1/pools/{pool}/grants")
    await rest(
        "GET",
        "/credits/{ref}/pools/{poolId}/transactions",
        f"/credits/r1/pools/{pool}/transactions",
    )
    change = {"changeToPlanId": plans["basic"], "changeType": "DOWNGRADE"}
    await rest(
        "POST", "/subscriptions/{id}/plan-change", f"/subscriptions/{sub2}/plan-change", json=change
    )
    await rest(
        "DELETE",
        "/subscriptions/{id}/plan-change/scheduled",
        f"/subscriptions/{sub2}/plan-change/scheduled",
    )
    await rest("POST", "/subscriptions/cancellation/{id}", f"/subscriptions/cancellation/{sub1}")
    await rest(
        "DELETE",
        "/subscriptions/cancellation/{id}/scheduled",
        f"/subscriptions/cancellation/{sub1}/scheduled",
    )
    await rest("GET", "/analytics/margins", "/analytics/margins", params={"groupBy": "customer"})
    await rest("GET", "/analytics/customers/{ref}", "/analytics/customers/r1")
    await rest("GET", "/analytics/timeseries", "/analytics/timeseries", params={"interval": "day"})
    await rest("GET", "/analytics/model-prices", "/analytics/model-prices")
    await rest("GET", "/settings/costs", "/settings/costs")
    override = {
        "model": "my-model",
        "provider": "acme",
        "inputPricePerMillion": 1,
        "outputPricePerMillion": 2,
    }
    await rest(
        "PUT", "/settings/costs", "/settings/costs", json={"modelPriceOverrides": [override]}
    )
    await rest("GET", "/analytics/alerts/settings", "/analytics/alerts/settings")
    await rest(
        "PUT",
        "/analytics/alerts/settings",
        "/analytics/alerts/settings",
        json={"threshold": 0.5, "windowDays": 30},
    )
    await rest("GET", "/analytics/alerts", "/analytics/alerts")
    await rest("GET", "/test-clock", "/test-clock")
    await rest("POST", "/test-clock", "/test-clock", json={"frozen": True})
    await rest("POST", "/test-clock/advance", "/test-clock/advance", json={"days": 1})
    await rest("GET", "/stripe/usage-reconciliation", "/stripe/usage-reconciliation")

    # the other Stripe endpoints need a (fake) Stripe account: tests/test_stripe_*.py call
    # them, and the schema guard checks each of their answers there
    every = {
        (r.method, r.path)
        for r in client_api().routes
        if "/stripe" not in r.path or r.path.endswith("/usage-reconciliation")
    }
    assert seen == every, sorted(every - seen)

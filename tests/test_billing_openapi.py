"""Every billing/credits endpoint answers with the shape its OpenAPI response model
declares (the document is generated from the same declarations)."""

from __future__ import annotations

import re

import pytest

from tanso_mcp.web.app import client_api
from tests.billing_helpers import Billing
from tests.factories import make_plan

pytestmark = pytest.mark.anyio


def _route(method: str, path: str):
    for r in client_api().routes:
        pattern = "^" + re.sub(r"{\w+}", "[^/]+", r.path) + "$"
        if r.method == method and re.match(pattern, path.split("?")[0]):
            return r
    raise AssertionError(f"no route for {method} {path}")


async def test_billing_responses_match_their_declared_models(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    basic = await make_plan(
        ctx,
        b.env,
        key="basic",
        price="49.00",
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 10}]',
    )
    pro = await make_plan(ctx, b.env, key="pro", price="99.00")
    await b.customer("c")
    calls: list[tuple[str, str, dict]] = []

    async def hit(method, path, expect=200, **kw):
        body = await b.req(method, path, expect, **kw)
        calls.append((method, "/api/v1/client" + path, body))
        return body["data"]

    created = await hit(
        "POST", "/subscriptions", 201, json={"customerReferenceId": "c", "planId": basic["plan_id"]}
    )
    sub_id, inv_id = created["subscription"]["id"], created["invoice"]["id"]
    await hit("POST", f"/billing/invoices/{inv_id}/mark-paid")
    await hit("GET", f"/subscriptions/{sub_id}")
    await hit("GET", "/billing/invoices/c")
    await hit("GET", f"/billing/invoice/{inv_id}")
    await hit(
        "POST",
        f"/subscriptions/{sub_id}/plan-change",
        json={"changeToPlanId": pro["plan_id"], "changeType": "UPGRADE"},
    )
    await hit(
        "POST",
        f"/subscriptions/{sub_id}/plan-change",
        json={"changeToPlanId": basic["plan_id"], "changeType": "DOWNGRADE"},
    )
    await hit("DELETE", f"/subscriptions/{sub_id}/plan-change/scheduled")
    await hit("POST", f"/subscriptions/cancellation/{sub_id}")
    await hit("DELETE", f"/subscriptions/cancellation/{sub_id}/scheduled")
    top = await hit(
        "POST",
        "/credits/c/grants",
        201,
        json={"denomination": "AI_TOKENS", "amount": 5, "idempotencyKey": "k"},
    )
    pool_id = top["pool"]["id"]
    for path in ("/credits/c/pools", f"/credits/c/pools/{pool_id}"):
        await hit("GET", path)
    for path in (f"/credits/c/pools/{pool_id}/transactions", f"/credits/c/pools/{pool_id}/grants"):
        await hit("GET", path)
    await hit("POST", f"/subscriptions/cancellation/{sub_id}?cancelMode=IMMEDIATE")
    doc = (await client.get("/openapi.json")).json()
    for method, path, body in calls:
        route = _route(method, path)
        assert route.response is not None, path
        assert route.path in doc["paths"] and method.lower() in doc["paths"][route.path]
        items = body["data"] if route.paginated else [body["data"]]
        if route.paginated:
            assert set(body["pagination"]) == {"limit", "offset", "total", "hasMore"}
        for item in items:
            route.response.model_validate(item)
    await b.check()

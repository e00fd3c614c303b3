"""Metering endpoints: the OpenAPI document lists them with their request bodies, every
answer matches its declared response model, and the ASGI fast lane answers exactly what
the declared route answers."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.applications import Starlette

from tanso_mcp.web.app import client_api, create_app
from tanso_mcp.web.hotpath import HotPaths
from tests.metering_factories import metered_setup

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
PATHS = {
    ("post", "/api/v1/client/events"): "Event",
    ("post", "/api/v1/client/events/batch"): "EventBatch",
    ("post", "/api/v1/client/entitlements"): "EntitlementEvaluation",
    ("post", "/api/v1/client/entitlements/check"): "EntitlementEvaluation",
    ("get", "/api/v1/client/entitlements/{ref}/{featureKey}"): None,
    ("get", "/api/v1/client/entitlements/{ref}"): None,
}


def _route(method: str, path: str):
    for r in client_api().routes:
        pattern = "^" + re.sub(r"{\w+}", "[^/]+", r.path) + "$"
        if r.method == method and re.match(pattern, path.split("?")[0]):
            return r
    raise AssertionError(f"no route for {method} {path}")


async def test_openapi_documents_the_metering_endpoints(client):
    doc = (await client.get("/openapi.json")).json()
    for (method, path), body in PATHS.items():
        op = doc["paths"][path][method]
        if body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + body)
    event = doc["components"]["schemas"]["Event"]
    assert {"eventIdempotencyKey", "usageUnits", "costInput"} <= set(event["properties"])
    assert "409" in doc["paths"]["/api/v1/client/events"]["post"]["responses"]


async def test_answers_match_their_declared_models(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    h = tenant.headers("client")
    calls = []

    async def hit(method, path, expect=200, **kw):
        r = await client.request(method, API + path, headers=h, **kw)
        assert r.status_code == expect, r.text
        calls.append((method, API + path, r.json()))

    ev = {"eventName": "x", "customerReferenceId": "cus_1", "featureKey": "api_calls"}
    await hit("POST", "/events", 201, json={**ev, "eventIdempotencyKey": "a"})
    await hit("POST", "/events/batch", json={"events": [{**ev, "eventIdempotencyKey": "b"}]})
    await hit("GET", "/entitlements/cus_1/api_calls")
    await hit("GET", "/entitlements/cus_1")
    body = {"customerReferenceId": "cus_1", "featureKey": "api_calls", "track": {"usageUnits": 2}}
    await hit("POST", "/entitlements", json=body)
    await hit("POST", "/entitlements/check", json=body)
    for method, path, payload in calls:
        route = _route(method, path)
        items = payload["data"] if route.paginated else [payload["data"]]
        for item in items:
            route.response.model_validate(item)


def _without_fast_lane(app: Starlette) -> Starlette:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPaths]
    app.middleware_stack = None
    return app


async def test_fast_lane_answers_like_the_declared_routes(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    plain = _without_fast_lane(create_app(ctx))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain), base_url="http://testserver"
    ) as routed:
        for n, c in enumerate((client, routed)):
            h = tenant.headers("client")
            r = await c.post(
                f"{API}/events",
                content=json.dumps(
                    {"eventName": "x", "customerReferenceId": "cus_1", "featureKey": "api_calls"}
                ),
                headers={**h, "X-Idempotency-Key": f"same-{n}", "content-type": "application/json"},
            )
            assert r.status_code == 201
        answers = []
        for c in (client, routed):
            r = await c.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers())
            answers.append((r.status_code, r.json()))
            r = await c.post(
                f"{API}/events",
                json={"eventName": "x", "customerReferenceId": "cus_1", "usageUnits": -1},
                headers=tenant.headers("client"),
            )
            answers.append((r.status_code, r.json()))
            r = await c.post(
                f"{API}/events",
                json={
                    "eventName": "x",
                    "customerReferenceId": "cus_1",
                    "eventIdempotencyKey": "same-0",
                },
                headers=tenant.headers("client"),
            )
            answers.append((r.status_code, r.json()))
            r = await c.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers("read"))
            answers.append((r.status_code, r.json()))
            r = await c.post(
                f"{API}/events/batch",
                json={
                    "events": [
                        {
                            "eventName": "x",
                            "customerReferenceId": "cus_1",
                            "eventIdempotencyKey": "same-1",
                        }
                    ]
                },
                headers=tenant.headers("client"),
            )
            answers.append((r.status_code, r.json()))
        half = len(answers) // 2
        assert answers[:half] == answers[half:]
        assert [a[0] for a in answers[:half]] == [200, 400, 409, 200, 200]
        r = await client.post(
            f"{API}/events",
            json={"eventName": "x", "customerReferenceId": "c"},
            headers=tenant.headers("read"),
        )
        assert r.status_code == 403

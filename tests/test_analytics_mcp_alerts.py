"""The analytics MCP tool group (off by default) and margin alerts delivered as signed
webhooks to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tanso_mcp.bootstrap import build_context
from tanso_mcp.plugin.manager import build_plugins
from tanso_mcp.services.jobs import run_due
from tests.analytics_scenario import (
    API,
    BY_CUSTOMER,
    BY_MODEL,
    check_rows,
    check_totals,
    send,
    set_up,
)
from tests.conftest import make_tenant
from tests.mcp_helpers import call, fails, free_port, inmemory, ok

pytestmark = pytest.mark.anyio

ANALYTICS_TOOLS = {
    "getMarginSummary",
    "getCustomerMargin",
    "getMarginTimeseries",
    "getCostSettings",
    "updateCostSettings",
    "listModelPrices",
    "getMarginAlertSettings",
    "updateMarginAlertSettings",
    "listMarginAlerts",
}


async def test_tools_off_by_default_and_same_figures_as_rest(ctx, client, tenant):
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert len(names) == 34 and not names & ANALYTICS_TOOLS
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    async with inmemory(ctx, tenant.key("read"), ("analytics",)) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert {"getMarginSummary", "listModelPrices", "listMarginAlerts"} <= names
        assert "updateCostSettings" not in names  # admin only
        data = await ok(mcp, "getMarginSummary", {"groupBy": "customer", "limit": 2})
        assert [r["key"] for r in data["rows"]] == ["A", "B"]  # worst first
        assert data["pagination"]["total"] == 3
        data = await ok(mcp, "getMarginSummary", {"groupBy": "model", "limit": 50})
        check_rows(data["rows"], BY_MODEL)
        check_totals(data["totals"])
        data = await ok(mcp, "getCustomerMargin", {"customerReferenceId": "A"})
        assert data["costMicros"] == BY_CUSTOMER["A"][3]
        series = await ok(mcp, "getMarginTimeseries", {"interval": "week"})
        assert sum(b["costMicros"] for b in series["buckets"]) == 5_352_000
        bad = await fails(mcp, "getMarginSummary", {"groupBy": "planet"})
        assert bad["error"] == "invalid_request" and bad.get("field") == "groupBy"
        bad = await fails(mcp, "getMarginSummary", {"from": "2026-01-01T00:30:00Z"})
        assert bad.get("field") == "from"
        prices = await ok(mcp, "listModelPrices")
        mini = next(p for p in prices["items"] if p["model"] == "gpt-4o-mini")
        assert mini["source"] == "override" and Decimal(
            str(mini["inputPricePerMillion"])
        ) == Decimal("0.20")
    async with inmemory(ctx, tenant.key("admin"), ("analytics",)) as mcp:
        costs = await ok(
            mcp,
            "updateCostSettings",
            {"modelPriceOverridesJson": "[]"},
        )
        assert costs["modelPriceOverrides"] == []
        assert costs["defaultCostConfig"]["model_costs"]["my-model"]
        is_error, data = await call(mcp, "updateCostSettings", {"defaultCostConfigJson": "[1]"})
        assert is_error and data["error"] == "invalid_request"
        # an event tracked over MCP reports its cost source like the REST answer
        for ref, source in (("C", "rule"), ("B", "none")):
            event = await ok(
                mcp,
                "ingestEvent",
                {
                    "eventIdempotencyKey": f"mcp-{ref}",
                    "eventName": "call",
                    "customerReferenceId": ref,
                    "featureKey": "chat",
                    "usageUnits": 1,
                    "occurredAt": "2026-01-15T09:45:00Z",
                },
            )
            assert event["costSource"] == source, event


# --------------------------------------------------------------------------- alerts


class Receiver:
    """A real HTTP server on a loopback port recording what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()

        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response(status_code=204)

        app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Receiver:
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(1000):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise AssertionError("the receiver did not start")

    async def __aexit__(self, *exc) -> None:
        self.server.should_exit = True
        await self.task

    async def wait(self, n: int) -> None:
        for _ in range(500):
            if len(self.received) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"expected {n} deliveries, got {len(self.received)}")


async def test_alert_fires_once_signed_then_recovers(settings, clock):
    import importlib

    import httpx

    importlib.import_module("tanso_webhooks_loader")  # the plugin's source, importable
    wh = importlib.import_module("tanso_webhooks")

    async with Receiver() as receiver:
        hooked = settings.model_copy(
            update={"plugins": {"webhooks": {"urls": [receiver.url], "secret": "whsec_test"}}}
        )
        ctx = build_context(
            hooked, clock=clock, plugins=build_plugins(load_entrypoints=False, extra=[wh])
        )
        from tanso_mcp.web.app import create_app

        app = create_app(ctx)
        try:
            tenant = await make_tenant(ctx)
            env = tenant.env_ids["test"]
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client:
                await set_up(ctx, client, tenant)
                r = await client.put(
                    f"{API}/analytics/alerts/settings",
                    json={"threshold": 0.5, "windowDays": 30, "customers": {"C": 0.9}},
                    headers=tenant.headers("admin"),
                )
                assert r.status_code == 200, r.text
                await send(client, tenant)
                # A (-0.7233) and B (0.1667) are below 0.5; C (0.80) below its own 0.9
                await run_due(ctx, env)
                await wh.dispatcher_for(ctx).flush()
                await receiver.wait(3)
                kinds = {}
                for headers, body in receiver.received:
                    assert wh.verify("whsec_test", headers["tanso-signature"], body)
                    event = json.loads(body)
                    assert headers["tanso-event"] == event["type"] == "margin.alert"
                    kinds[event["data"]["customerReferenceId"]] = event["data"]
                assert set(kinds) == {"A", "B", "C"}
                assert Decimal(str(kinds["A"]["grossMargin"])) == Decimal("-0.7233")
                # evaluated again an hour later: nothing new (fires once per crossing)
                clock.set(clock.now() + timedelta(hours=1, minutes=1))
                ctx.clocks.forget()
                await run_due(ctx, env)
                await wh.dispatcher_for(ctx).flush()
                assert len(receiver.received) == 3
                # C earns well: its margin climbs back above 0.9 -> one recovery
                r = await client.post(
                    f"{API}/events",
                    json={
                        "eventIdempotencyKey": "big",
                        "eventName": "call",
                        "customerReferenceId": "C",
                        "featureKey": "chat",
                        "usageUnits": 1,
                        "revenueAmount": "100",
                        "costAmount": "0",
                        "occurredAt": "2026-01-15T10:30:00Z",
                    },
                    headers=tenant.headers("client"),
                )
                assert r.status_code == 201, r.text
                clock.set(clock.now() + timedelta(hours=1))
                ctx.clocks.forget()
                await run_due(ctx, env)
                await wh.dispatcher_for(ctx).flush()
                await receiver.wait(4)
                headers, body = receiver.received[3]
                assert wh.verify("whsec_test", headers["tanso-signature"], body)
                event = json.loads(body)
                assert event["type"] == "margin.recovered"
                assert event["data"]["customerReferenceId"] == "C"
                r = await client.get(f"{API}/analytics/alerts", headers=tenant.headers("read"))
                listed = r.json()["data"]
                assert [a["type"] for a in listed][:1] == ["margin.recovered"]
                assert len(listed) == 4
                # the same list over MCP
                async with inmemory(ctx, tenant.key("read"), ("analytics",)) as mcp:
                    page = await ok(mcp, "listMarginAlerts", {"limit": 10})
                assert page["items"] == listed
                # a second process evaluating the same instant adds nothing (unique key)
                from tanso_mcp.services.analytics_alerts import evaluate

                async with ctx.db.unit_of_work() as s:
                    assert await evaluate(s, env, clock.now()) == []
        finally:
            await ctx.close()


async def test_alert_settings_validation(ctx, client, tenant):
    for body, field in (
        ({"threshold": 2}, "threshold"),
        ({"windowDays": 0}, "windowDays"),
        ({"customers": {"x": "abc"}}, "customers.x"),
    ):
        r = await client.put(
            f"{API}/analytics/alerts/settings", json=body, headers=tenant.headers("admin")
        )
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["field"].endswith(field), r.json()
    r = await client.put(
        f"{API}/analytics/alerts/settings",
        json={"threshold": 0.3},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 403
    r = await client.get(f"{API}/analytics/alerts/settings", headers=tenant.headers("read"))
    assert r.json()["data"]["enabled"] is False

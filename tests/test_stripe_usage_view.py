"""The usage reconciliation view (REST and the optional ``stripe`` MCP tool group) in a
native environment: accepted, covered by credits and billable units per customer and
feature and period; nothing is forwarded without a usage-reporting provider; bad
``period`` values are a 400 naming the field."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.mcp_helpers import fails, inmemory, ok
from tests.metering_factories import give_credits, metered_setup

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal


def rule(mode="reset"):
    return {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "tokens",
            "price_per_unit": "0.02",
            "reset_mode": mode,
        },
        "credits": {"denomination": "AI_TOKENS"},
    }


async def post(client, tenant, key, units, feature="api_calls", ref="cus_1"):
    r = await client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "tokens",
            "customerReferenceId": ref,
            "featureKey": feature,
            "usageUnits": units,
        },
        headers=tenant.headers("client"),
    )
    assert r.status_code == 201, r.text


async def test_native_reconciliation_counts_credits_and_overage(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(
        ctx, env, rule=rule(), extra_features={"storage": json.dumps(rule("accumulate"))}
    )
    await give_credits(ctx, env, "cus_1", "AI_TOKENS", "100", subscription_id=s["subscription_id"])
    await post(client, tenant, "e1", 60)
    await post(client, tenant, "e2", 70.5)  # 40 from credits, 30.5 overage
    await post(client, tenant, "e3", 5, feature="storage")

    r = await client.get(f"{API}/stripe/usage-reconciliation", headers=tenant.headers("read"))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["forwarding"] is False
    items = {i["featureKey"]: i for i in data["items"]}
    api = items["api_calls"]
    assert api["customerReferenceId"] == "cus_1" and api["window"] == "period"
    assert [
        D(str(api[k])) for k in ("unitsAccepted", "unitsCoveredByCredits", "unitsBillable")
    ] == [
        D("130.5"),
        D("100"),
        D("30.5"),
    ]
    assert D(str(api["unitsReported"])) == 0 and D(str(api["unitsPending"])) == 0
    assert api["forwarded"] is False
    storage = items["storage"]
    assert storage["window"] == "lifetime" and "periodStart" not in storage  # null: omitted
    assert D(str(storage["unitsBillable"])) == 5 and storage["forwarded"] is False
    assert D(str(data["totals"]["unitsAccepted"])) == D("135.5")

    # the previous period holds nothing yet; a date inside the current one is the same
    prev = (
        await client.get(
            f"{API}/stripe/usage-reconciliation?period=previous", headers=tenant.headers("read")
        )
    ).json()["data"]
    assert [i["featureKey"] for i in prev["items"]] == ["storage"]  # lifetime counter only
    today = ctx.clocks.system_now().date().isoformat()
    same = (
        await client.get(
            f"{API}/stripe/usage-reconciliation?period={today}", headers=tenant.headers("read")
        )
    ).json()["data"]
    assert same["items"] == data["items"]


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "2026-01-15T10:00:00"])
async def test_bad_period_is_a_400_naming_it(client, tenant, bad):
    r = await client.get(
        f"{API}/stripe/usage-reconciliation", params={"period": bad}, headers=tenant.headers()
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "period"


async def test_reconciliation_tool_only_in_the_stripe_group(ctx, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env, rule=rule())
    async with inmemory(ctx, tenant.key("read")) as plain:
        names = {t.name for t in (await plain.list_tools()).tools}
        assert "getStripeUsageReconciliation" not in names
    async with inmemory(ctx, tenant.key("read"), tool_groups=("stripe",)) as mcp:
        data = await ok(mcp, "getStripeUsageReconciliation", {})
        assert data["forwarding"] is False and data["items"] == []
        err = await fails(mcp, "getStripeUsageReconciliation", {"period": "soon"})
        assert err["error"] == "invalid_request"

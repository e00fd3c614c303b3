"""Usage on invoices through the real billing flow (services/usage.usage_lines): the
invoice that closes a period carries one usage line per metered feature, pricing only
overage (credit-covered units are never billed twice), graduated tiers on the period
total, accumulate billing the period's increment, recomputed while the invoice is open
and never after."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.billing_helpers import Billing, money
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal
TIERS = [
    {"up_to": 1000, "price_per_unit": "0.10"},
    {"up_to": 5000, "price_per_unit": "0.08"},
    {"up_to": "inf", "price_per_unit": "0.05"},
]


async def ingest(b: Billing, key: str, units, feature="api_calls", ref="c", **kw):
    r = await b.client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "use",
            "customerReferenceId": ref,
            "featureKey": feature,
            "usageUnits": units,
            **kw,
        },
        headers=b.tenant.headers("client"),
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["data"]


def lines(invoice, usage_only: bool = False) -> list[tuple[str, Decimal]]:
    return [
        (i["description"], money(i["chargeAmount"]))
        for i in invoice["items"]
        if not usage_only or i["description"].startswith("Usage for")
    ]


async def test_overage_only_after_plan_credits(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    rule = {
        "pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"},
        "credits": {"denomination": "AI_TOKENS"},
    }
    plan = await make_plan(
        ctx,
        b.env,
        key="arr",
        price="10.00",
        timing="IN_ARREARS",
        features={"api_calls": json.dumps(rule)},
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100}]',
    )
    await b.customer("c")
    await b.subscribe("c", plan["plan_id"])
    d = await ingest(b, "e1", 130)
    assert D(str(d["creditsDeducted"])) == 100 and D(str(d["overageUnits"])) == 30
    await b.to("2026-02-15T00:00:00Z")
    closing = (await b.invoices("c"))[0]
    assert lines(closing) == [
        ("Plan base price: Arr", D("10.00")),
        ("Usage for api_calls: 30 units", D("3.00")),
    ]
    assert money(closing["amount"]) == D("13.00")
    await b.check()


async def test_graduated_on_the_period_total_and_late_events(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    rule = {"pricing": {"model": "graduated", "usage_unit_type": "calls", "tiers": TIERS}}
    plan = await make_plan(
        ctx,
        b.env,
        key="grad",
        price="0",
        timing="IN_ARREARS",
        features={"api_calls": json.dumps(rule)},
    )
    await b.customer("c")
    sub, _ = await b.subscribe("c", plan["plan_id"])
    await ingest(b, "a", 1000)
    await ingest(b, "b", 500)
    await b.to("2026-02-15T00:00:00Z")
    closing = (await b.invoices("c"))[0]
    assert lines(closing, True) == [("Usage for api_calls: 1500 units", D("140.00"))]  # App. B
    # a late event of January while its invoice is still open is billed when billing
    # recomputes it (here on its way to PAST_DUE, after the 3-day grace)
    await ingest(b, "late1", 100, occurredAt="2026-02-14T23:00:00Z")
    await b.to("2026-02-19T00:00:00Z")
    closing = (await b.invoices("c"))[0]
    assert lines(closing, True) == [("Usage for api_calls: 1600 units", D("148.00"))]
    await b.pay(closing["id"])
    # once paid it is never recomputed: later usage of that period is not billed
    await ingest(b, "late2", 100, occurredAt="2026-02-14T23:30:00Z")
    await b.to("2026-03-16T00:00:00Z")
    invoices = await b.invoices("c")
    assert lines(invoices[0], True) == [("Usage for api_calls: 1600 units", D("148.00"))]
    assert invoices[0]["status"] == "PAID"
    assert sub["id"]
    await b.check()


async def test_accumulate_bills_the_period_increment(ctx, client, tenant):
    """Worked example: lifetime usage 800 before the period, 400 in it -> cost(1200) -
    cost(800) = 36.00."""
    b = Billing(ctx, client, tenant)
    rule = {
        "pricing": {
            "model": "graduated",
            "usage_unit_type": "calls",
            "tiers": TIERS,
            "reset_mode": "accumulate",
        }
    }
    plan = await make_plan(
        ctx,
        b.env,
        key="acc",
        price="0",
        timing="IN_ARREARS",
        features={"api_calls": json.dumps(rule)},
    )
    await b.customer("c")
    await b.subscribe("c", plan["plan_id"], gracePeriod=40)
    await ingest(b, "p1", 800)
    await b.to("2026-02-15T00:00:00Z")
    await ingest(b, "p2", 400)
    await b.to("2026-03-15T00:00:00Z")
    first, second = (await b.invoices("c"))[:2]
    assert lines(first, True) == [("Usage for api_calls: 800 units", D("80.00"))]
    assert lines(second, True) == [("Usage for api_calls: 400 units", D("36.00"))]
    await b.check()


async def test_zeroed_events_over_the_limit_are_not_billed(ctx, client, tenant):
    b = Billing(ctx, client, tenant)
    rule = {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "calls",
            "price_per_unit": "1",
            "max_usage": 10,
        }
    }
    plan = await make_plan(
        ctx,
        b.env,
        key="cap",
        price="0",
        timing="IN_ARREARS",
        features={"api_calls": json.dumps(rule)},
    )
    await b.customer("c")
    await b.subscribe("c", plan["plan_id"])
    await ingest(b, "x1", 8)
    await ingest(b, "x2", 4)  # crosses the line: billed in full
    d = await ingest(b, "x3", 5)  # zeroed
    assert d["usageLimitExceeded"] is True
    await b.to("2026-02-15T00:00:00Z")
    assert lines((await b.invoices("c"))[0], True) == [
        ("Usage for api_calls: 12 units", D("12.00"))
    ]

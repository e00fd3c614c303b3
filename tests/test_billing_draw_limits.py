"""A pool-subscription link's draw limit caps what the subscription draws from the pool
per billing period: the drawn total starts again at zero when the period renews."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from tanso_mcp.db.models import CreditPool, CreditPoolSubscription
from tanso_mcp.db.scale import qty_to_int
from tests.billing_helpers import Billing
from tests.factories import make_plan

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal
RULE = {
    "pricing": {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"},
    "credits": {"denomination": "AI_TOKENS"},
}


async def ingest(b: Billing, key: str, units: int) -> tuple[Decimal, Decimal]:
    r = await b.client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "use",
            "customerReferenceId": "c",
            "featureKey": "api_calls",
            "usageUnits": units,
        },
        headers=b.tenant.headers("client"),
    )
    assert r.status_code in (200, 201), r.text
    d = r.json()["data"]
    return D(str(d["creditsDeducted"])), D(str(d["overageUnits"]))


@pytest.mark.parametrize("timing", ["IN_ARREARS", "IN_ADVANCE"])
async def test_draw_limit_is_per_period(ctx, client, tenant, timing):
    b = Billing(ctx, client, tenant)
    plan = await make_plan(
        ctx,
        b.env,
        key="metered",
        price="0",
        timing=timing,
        features={"api_calls": json.dumps(RULE)},
        credit_allocations='[{"denomination": "AI_TOKENS", "creditAmount": 100}]',
    )
    await b.customer("c")
    sub, _ = await b.subscribe("c", plan["plan_id"], gracePeriod=30)
    async with ctx.db.unit_of_work() as s:  # no API sets a draw limit: the link row does
        pool_id = await s.scalar(select(CreditPool.id))
        await s.execute(
            update(CreditPoolSubscription)
            .where(CreditPoolSubscription.subscription_id == sub["id"])
            .values(draw_limit_q=qty_to_int(D(50)))
        )
    ctx.invalidate(b.env)
    assert await ingest(b, "jan1", 60) == (D(50), D(10))
    assert await ingest(b, "jan2", 5) == (D(0), D(5))  # the limit holds within the period
    await b.to("2026-02-15T00:00:00Z")  # renewal: a new period, a new grant
    if timing == "IN_ADVANCE":  # its credits come with the payment of the period
        renewal = (await b.invoices("c"))[-1]
        await b.pay(renewal["id"])
    assert await ingest(b, "feb1", 60) == (D(50), D(10))
    assert await ingest(b, "feb2", 5) == (D(0), D(5))
    async with ctx.db.reader() as s:
        drawn = await s.scalar(
            select(CreditPoolSubscription.total_drawn_q).where(
                CreditPoolSubscription.pool_id == pool_id
            )
        )
    assert drawn == qty_to_int(D(50))  # this period's draws only
    await b.check()

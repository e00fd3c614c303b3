"""Credits on the event path: drawn before anything counts as overage (FIFO over grants,
within draw limits), hard limits reject (409, nothing stored), the ledger invariant
holds after every scenario, and checks see balances at once."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import (
    CreditGrant,
    CreditPool,
    CreditTransaction,
    Event,
    UsageCounter,
)
from tests.conftest import START
from tests.metering_factories import give_credits, ledger_problems, metered_setup

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
D = Decimal


def rule(price="0.10", max_usage=None, weight=None, denom="AI_TOKENS", mode="reset"):
    pricing = {"model": "usage", "usage_unit_type": "tokens", "price_per_unit": price}
    if max_usage is not None:
        pricing["max_usage"] = max_usage
    pricing["reset_mode"] = mode
    credits = {"denomination": denom}
    if weight is not None:
        credits["weight"] = weight
    return {"pricing": pricing, "credits": credits}


async def post(client, tenant, key, units, ref="cus_1", feature="api_calls"):
    return await client.post(
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


async def pool_state(ctx, pool_id):
    async with ctx.db.reader() as s:
        p = await s.get(CreditPool, pool_id)
        grants = (
            (
                await s.execute(
                    select(CreditGrant.remaining_q)
                    .where(CreditGrant.pool_id == pool_id)
                    .order_by(CreditGrant.created_at, CreditGrant.id)
                )
            )
            .scalars()
            .all()
        )
        return p.balance_q, p.total_consumed_q, list(grants)


async def count(ctx, model, *where):
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)))


async def test_credits_before_overage_appendix_b(ctx, client, tenant):
    """Pool 100 credits, weight 1, event 130 units -> 100 deducted, 30 overage billed at
    the rule price (worked example)."""
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule())
    pool = await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "100", subscription_id=s["subscription_id"]
    )
    r = await post(client, tenant, "e1", 130)
    assert r.status_code == 201, r.text
    d = r.json()["data"]
    assert D(str(d["creditsDeducted"])) == 100 and D(str(d["overageUnits"])) == 30
    assert await pool_state(ctx, pool) == (0, 1000000, [0])
    async with ctx.db.reader() as s_:
        e = await s_.scalar(select(Event))
        tx = await s_.scalar(select(CreditTransaction).where(CreditTransaction.type == "DEDUCTION"))
    assert (e.usage_q, e.billable_q, e.overage_q, e.credits_deducted_q) == (
        1300000,
        1300000,
        300000,
        1000000,
    )
    assert e.revenue_micros == 3_000_000  # only the 30 uncovered units: 30 x 0.10
    assert (tx.amount_q, tx.balance_before_q, tx.balance_after_q) == (-1000000, 1000000, 0)
    assert tx.event_id == e.id and tx.subscription_id == s["subscription_id"]
    assert await ledger_problems(ctx, env) == []
    check = (
        await client.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers())
    ).json()
    assert check["data"]["credit"]["balance"] == 0
    assert check["data"]["usage"]["used"] == 130


async def test_hard_limit_rejects_and_stores_nothing(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule())
    pool = await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "100", hard_limit=True, subscription_id=s["subscription_id"]
    )
    r = await post(client, tenant, "big", 130)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "insufficient_credits"
    assert await count(ctx, Event) == 0
    assert await count(ctx, UsageCounter, UsageCounter.used_q > 0) == 0
    assert await pool_state(ctx, pool) == (1000000, 0, [1000000])
    # the key was not consumed: the same key succeeds once it fits
    r = await post(client, tenant, "big", 100)
    assert r.status_code == 201
    r = await post(client, tenant, "one-more", 1)
    assert r.status_code == 409
    check = (
        await client.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers())
    ).json()
    assert check["data"]["allowed"] is False and check["data"]["reason"] == "Credit limit reached"
    assert await ledger_problems(ctx, env) == []


async def test_fifo_over_grants_and_weight(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule(weight="2"))
    sub = s["subscription_id"]
    await give_credits(
        ctx,
        env,
        "cus_1",
        "AI_TOKENS",
        "50",
        subscription_id=sub,
        created_at=START - timedelta(days=2),
    )
    pool = await give_credits(
        ctx,
        env,
        "cus_1",
        "AI_TOKENS",
        "100",
        subscription_id=sub,
        created_at=START - timedelta(days=1),
    )
    r = await post(client, tenant, "w", 35)  # 70 credits: all of the older grant, 20 of the newer
    assert r.status_code == 201
    assert D(str(r.json()["data"]["creditsDeducted"])) == 70
    assert await pool_state(ctx, pool) == (800000, 700000, [0, 800000])
    r = await post(client, tenant, "w2", 45)  # 90 credits needed, 80 left: 40 units covered
    d = r.json()["data"]
    assert D(str(d["creditsDeducted"])) == 80 and D(str(d["overageUnits"])) == 5
    assert await ledger_problems(ctx, env) == []


async def test_expired_grants_are_expired_not_drawn(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule())
    sub = s["subscription_id"]
    pool = await give_credits(
        ctx,
        env,
        "cus_1",
        "AI_TOKENS",
        "40",
        subscription_id=sub,
        created_at=START - timedelta(days=10),
        expires_at=START + timedelta(days=1),
    )
    await give_credits(ctx, env, "cus_1", "AI_TOKENS", "25", subscription_id=sub)
    # move the environment clock past the first grant's expiry (no job has run)
    async with ctx.db.unit_of_work() as s_:
        await ctx.clocks.set_test_clock(s_, env, START + timedelta(days=2))
    ctx.clocks.forget(env)
    r = await post(client, tenant, "x", 30)
    d = r.json()["data"]
    assert D(str(d["creditsDeducted"])) == 25 and D(str(d["overageUnits"])) == 5
    async with ctx.db.reader() as s_:
        types = [
            t
            for (t,) in (
                await s_.execute(
                    select(CreditTransaction.type)
                    .where(CreditTransaction.pool_id == pool)
                    .order_by(CreditTransaction.created_at, CreditTransaction.id)
                )
            ).all()
        ]
    assert types == ["GRANT", "GRANT", "EXPIRATION", "DEDUCTION"]
    assert (await pool_state(ctx, pool))[0] == 0
    assert await ledger_problems(ctx, env) == []


async def test_draw_limit_caps_what_a_subscription_draws(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule())
    await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "100", subscription_id=s["subscription_id"], draw_limit="50"
    )
    d = (await post(client, tenant, "d1", 80)).json()["data"]
    assert D(str(d["creditsDeducted"])) == 50 and D(str(d["overageUnits"])) == 30
    d = (await post(client, tenant, "d2", 10)).json()["data"]
    assert D(str(d["creditsDeducted"])) == 0 and D(str(d["overageUnits"])) == 10
    assert await ledger_problems(ctx, env) == []


async def test_hard_limited_denomination_without_pool_rejects(ctx, client, tenant):
    env = tenant.env_ids["test"]
    from tanso_mcp.db.models import CreditModel

    async with ctx.db.unit_of_work() as s_:
        s_.add(
            CreditModel(
                environment_id=env,
                denomination="AI_TOKENS",
                name="AI tokens",
                hard_limit=True,
                created_at=START,
                modified_at=START,
            )
        )
    await metered_setup(ctx, env, rule=rule())
    r = await post(client, tenant, "np", 1)
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_credits"
    check = (
        await client.get(f"{API}/entitlements/cus_1/api_calls", headers=tenant.headers())
    ).json()
    assert check["data"]["allowed"] is False
    assert check["data"]["credit"]["hardLimit"] is True


async def test_credits_exhausted_then_limit(ctx, client, tenant):
    """Credits first, then overage, then the usage limit zeroes events (no credit is
    drawn for a zeroed event)."""
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule(max_usage=20))
    pool = await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "15", subscription_id=s["subscription_id"]
    )
    results = []
    for i in range(5):
        r = await post(client, tenant, f"k{i}", 6)
        results.append((r.status_code, r.json()["data"]))
    assert [c for c, _ in results] == [201, 201, 201, 201, 200]
    deducted = [D(str(d["creditsDeducted"])) for _, d in results]
    overage = [D(str(d["overageUnits"])) for _, d in results]
    assert deducted == [6, 6, 3, 0, 0] and overage == [0, 0, 3, 6, 0]
    assert results[3][1]["usageLimitExceeded"] is False  # 18 before it: below 20
    assert results[4][1]["usageLimitExceeded"] is True  # 24 before it
    assert (await pool_state(ctx, pool))[0] == 0
    assert await ledger_problems(ctx, env) == []


async def test_batch_with_hard_limit_rejects_only_what_does_not_fit(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, rule=rule())
    await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "10", hard_limit=True, subscription_id=s["subscription_id"]
    )
    events = [
        {
            "eventIdempotencyKey": f"b{i}",
            "eventName": "tokens",
            "customerReferenceId": "cus_1",
            "featureKey": "api_calls",
            "usageUnits": u,
        }
        for i, u in enumerate([4, 4, 4, 2, 1])
    ]
    r = await client.post(
        f"{API}/events/batch",
        content=json.dumps({"events": events}),
        headers={**tenant.headers("client"), "content-type": "application/json"},
    )
    data = r.json()["data"]
    assert [x["status"] for x in data["results"]] == [
        "accepted",
        "accepted",
        "error",
        "accepted",
        "error",
    ]
    assert data["results"][2]["error"]["code"] == "insufficient_credits"
    assert await count(ctx, Event) == 3
    assert await ledger_problems(ctx, env) == []


async def test_revenue_fast_path_matches_domain_pricing():
    """The writer prices usage rules in integer arithmetic; it must agree with the
    domain's exact Decimal pricing, rounding included."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tanso_mcp.domain.money import to_micros
    from tanso_mcp.domain.pricing import event_revenue
    from tanso_mcp.domain.rules import parse_rule_value
    from tanso_mcp.services.metering.batch import _RulePlan
    from tanso_mcp.services.metering.grants import Grant

    @settings(max_examples=300, deadline=None)
    @given(
        price=st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False),
        units_q=st.integers(min_value=0, max_value=10**12),
        currency=st.sampled_from(["USD", "JPY", "KWD"]),
    )
    def check(price, units_q, currency):
        value = parse_rule_value(
            {"pricing": {"model": "usage", "usage_unit_type": "u", "price_per_unit": str(price)}}
        )
        plan = _RulePlan(Grant("f", "k", "r", value, currency))
        expected = to_micros(event_revenue(value.pricing, D(units_q) / 10000, 0, currency))
        assert plan.revenue_micros(units_q, 0) == expected

    check()

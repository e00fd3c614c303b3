"""Property: an entitlement check predicts what the next ingest of one unit does.

Random customers with one to three subscriptions granting one feature (usage limits,
credit rules with soft or hard limits, per-subscription draw limits), random usage in
between, and checks each followed at once by one event of one unit — through the
routed handlers and through the ASGI fast lane, single and batch ingest alike. After
every check: ``allowed`` ⇔ the event is neither zeroed by a limit
(``usageLimitExceeded``) nor refused for credits (409 ``insufficient_credits``).
"""

from __future__ import annotations

import json
from itertools import count

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tanso_mcp.settings import Settings
from tanso_mcp.web.app import create_app
from tanso_mcp.web.hotpath import HotPaths
from tests.conftest import make_tenant
from tests.metering_factories import make_plan, subscribe

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
_names = count()


@pytest.fixture
def settings(db_url) -> Settings:
    return Settings(
        database_url=db_url,
        key_cache_seconds=600,
        entitlement_cache_seconds=600,
        jobs_enabled=False,
        max_body_bytes=65536,
    )


@pytest.fixture
async def lanes(ctx):
    """Two clients on the same context: the full app (fast lane first) and the app
    without its fast lane (every request through the routing table)."""
    fast = create_app(ctx)
    routed = create_app(ctx)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not HotPaths]
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://t") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=routed), base_url="http://t") as b,
    ):
        yield {"fast": a, "routed": b}


sub_st = st.fixed_dictionaries(
    {
        "limit": st.one_of(st.none(), st.integers(0, 4)),
        "credits": st.booleans(),
        "weight": st.sampled_from([1, 2]),
        "draw_limit": st.one_of(st.none(), st.integers(0, 4)),
    }
)
op_st = st.one_of(
    st.tuples(
        st.just("use"),
        st.integers(1, 3),
        st.sampled_from(["single", "batch"]),
        st.sampled_from(["fast", "routed"]),
    ),
    st.tuples(
        st.just("check"),
        st.sampled_from(["single", "batch"]),
        st.sampled_from(["fast", "routed"]),
        st.sampled_from(["fast", "routed"]),
    ),
)
scenario_st = st.fixed_dictionaries(
    {
        "subs": st.lists(sub_st, min_size=1, max_size=3),
        "credits": st.one_of(st.none(), st.integers(0, 8)),
        "hard": st.booleans(),
        "ops": st.lists(op_st, min_size=1, max_size=8),
    }
)


def _rule(sub: dict) -> str:
    pricing = {"model": "usage", "usage_unit_type": "calls", "price_per_unit": "0.10"}
    if sub["limit"] is not None:
        pricing["max_usage"] = sub["limit"]
    rule: dict = {"pricing": pricing}
    if sub["credits"]:
        rule["credits"] = {"denomination": "CR", "weight": sub["weight"]}
    return json.dumps(rule)


async def _ingest(client, tenant, kind: str, units: int) -> tuple[int, dict]:
    key = f"k{next(_names)}"
    body = {
        "eventIdempotencyKey": key,
        "eventName": "call",
        "customerReferenceId": "cus_p",
        "featureKey": "api_calls",
        "usageUnits": units,
    }
    h = tenant.headers("client")
    if kind == "single":
        r = await client.post(f"{API}/events", json=body, headers=h)
        data = r.json()
        return r.status_code, data.get("data") or data["error"]
    r = await client.post(f"{API}/events/batch", json={"events": [body]}, headers=h)
    assert r.status_code == 200, r.text
    item = r.json()["data"]["results"][0]
    if item["status"] == "error":
        return 409 if item["error"]["code"] == "insufficient_credits" else 400, item["error"]
    return 201, item


async def _pool(ctx, env, scenario, sub_ids) -> None:
    """The customer's pool of CR (hard or soft), the credits granted, every
    subscription linked to it with its draw limit."""
    from decimal import Decimal

    from sqlalchemy import select, update

    from tanso_mcp.db.models import CreditPoolSubscription, Customer
    from tanso_mcp.services import credits

    now = ctx.clocks.system_now()
    async with ctx.db.unit_of_work() as s:
        c = await s.scalar(
            select(Customer).where(Customer.environment_id == env, Customer.reference_id == "cus_p")
        )
        pool = await credits.ensure_pool(s, env, c.id, "CR", now, hard_limit=scenario["hard"])
        if scenario["credits"]:
            await credits.grant(
                s,
                env,
                pool,
                scenario["credits"] * 10_000,
                "PURCHASED",
                now,
                idempotency_key=f"g{pool.id}",
            )
        for sub, sid in zip(scenario["subs"], sub_ids, strict=True):
            await credits.link_subscription(s, env, pool.id, sid)
            if sub["draw_limit"] is not None:
                await s.execute(
                    update(CreditPoolSubscription)
                    .where(
                        CreditPoolSubscription.pool_id == pool.id,
                        CreditPoolSubscription.subscription_id == sid,
                    )
                    .values(draw_limit_q=int(Decimal(sub["draw_limit"]) * 10_000))
                )
        ctx.changed(s, env)


@hsettings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenario_st)
async def test_check_predicts_the_next_ingest(ctx, lanes, scenario):
    tenant = await make_tenant(ctx, f"acct{next(_names)}")
    env = tenant.env_ids["test"]
    sub_ids = []
    for n, sub in enumerate(scenario["subs"]):
        plan = await make_plan(
            ctx, env, key=f"p{n}", timing="IN_ARREARS", features={"api_calls": _rule(sub)}
        )
        sub_ids.append(await subscribe(ctx, env, "cus_p", plan["plan_id"]))
    if scenario["credits"] is not None:
        await _pool(ctx, env, scenario, sub_ids)
    for op in scenario["ops"]:
        if op[0] == "use":
            _, units, kind, lane = op
            status, _ = await _ingest(lanes[lane], tenant, kind, units)
            assert status in (200, 201, 409)
            continue
        _, kind, check_lane, ingest_lane = op
        r = await lanes[check_lane].get(
            f"{API}/entitlements/cus_p/api_calls", headers=tenant.headers("read")
        )
        assert r.status_code == 200, r.text
        decision = r.json()["data"]
        status, data = await _ingest(lanes[ingest_lane], tenant, kind, 1)
        went_through = status in (200, 201) and not data.get("usageLimitExceeded", False)
        assert decision["allowed"] is went_through, (scenario, op, decision, status, data)
        if status == 409:
            assert data["code"] == "insufficient_credits"

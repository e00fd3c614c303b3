"""One entitlement rule for every path: what a check answers is what the next ingest
does, whether the usage arrives alone, in a batch or over MCP."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tanso_mcp.settings import Settings
from tests.conftest import START
from tests.metering_factories import make_plan, subscribe

pytestmark = pytest.mark.anyio

API = "/api/v1/client"


@pytest.fixture
def settings(db_url) -> Settings:
    return Settings(
        database_url=db_url,
        key_cache_seconds=600,
        entitlement_cache_seconds=600,
        jobs_enabled=False,
        max_body_bytes=65536,
    )


def limited(limit: int) -> str:
    return json.dumps(
        {
            "pricing": {
                "model": "usage",
                "usage_unit_type": "calls",
                "price_per_unit": "0.10",
                "max_usage": limit,
            }
        }
    )


async def two_subscriptions(ctx, env, clock):
    small = await make_plan(
        ctx, env, key="small", timing="IN_ARREARS", features={"api_calls": limited(5)}
    )
    large = await make_plan(
        ctx, env, key="large", timing="IN_ARREARS", features={"api_calls": limited(100)}
    )
    first = await subscribe(ctx, env, "cus_1", small["plan_id"])
    clock.set(clock.now() + timedelta(seconds=1))
    second = await subscribe(ctx, env, "cus_1", large["plan_id"])
    return first, second


async def check(client, tenant, ref="cus_1", feature="api_calls"):
    r = await client.get(f"{API}/entitlements/{ref}/{feature}", headers=tenant.headers("read"))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def event(key, units=1, **kw):
    return {
        "eventIdempotencyKey": key,
        "eventName": "call",
        "customerReferenceId": "cus_1",
        "featureKey": "api_calls",
        "usageUnits": units,
        **kw,
    }


async def test_check_predicts_single_ingest_across_two_subscriptions(ctx, client, tenant, clock):
    env = tenant.env_ids["test"]
    first, second = await two_subscriptions(ctx, env, clock)
    for n in range(5):
        r = await client.post(
            f"{API}/events", json=event(f"e{n}"), headers=tenant.headers("client")
        )
        assert r.status_code == 201, r.text
    d = await check(client, tenant)
    assert d["allowed"] is True
    assert d["subscriptionId"] == second
    assert d["usage"] == {"used": 0, "limit": 100, "remaining": 100}
    r = await client.post(f"{API}/events", json=event("e5"), headers=tenant.headers("client"))
    assert r.status_code == 201, r.text
    assert r.json()["data"]["usageLimitExceeded"] is False
    d = await check(client, tenant)
    assert d["subscriptionId"] == second
    assert d["usage"]["used"] == 1
    # a named subscription is honoured even when it has no room left
    r = await client.post(
        f"{API}/events", json=event("e6", subscriptionId=first), headers=tenant.headers("client")
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["usageLimitExceeded"] is True


async def test_check_predicts_batch_ingest_across_two_subscriptions(ctx, client, tenant, clock):
    env = tenant.env_ids["test"]
    first, second = await two_subscriptions(ctx, env, clock)
    r = await client.post(
        f"{API}/events/batch",
        json={"events": [event(f"b{n}") for n in range(8)]},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 200, r.text
    results = r.json()["data"]["results"]
    assert [x.get("usageLimitExceeded", False) for x in results] == [False] * 8
    d = await check(client, tenant)
    assert d["allowed"] is True and d["subscriptionId"] == second
    assert d["usage"]["used"] == 3


# --------------------------------------------------------------------------- defect 2


async def test_a_new_customer_is_seen_by_the_next_check_rest(ctx, client, tenant):
    d = await check(client, tenant, ref="newbie")
    assert d["allowed"] is False and d["reason"] == "Customer not found"  # miss cached
    r = await client.post(
        f"{API}/customers",
        json={"customerReferenceId": "newbie"},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 201, r.text
    d = await check(client, tenant, ref="newbie")
    assert d["reason"] != "Customer not found"


async def test_a_new_customer_is_seen_by_the_next_check_mcp(ctx, client, tenant):
    from tests.mcp_helpers import inmemory, ok

    async with inmemory(ctx, tenant.key("admin")) as mcp:
        d = await ok(
            mcp, "checkEntitlement", {"customerReferenceId": "agent_made", "featureKey": "x"}
        )
        assert d["reason"] == "Customer not found"
        await ok(mcp, "createCustomer", {"customerReferenceId": "agent_made", "email": "a@b.co"})
        d = await ok(
            mcp, "checkEntitlement", {"customerReferenceId": "agent_made", "featureKey": "x"}
        )
        assert d["reason"] != "Customer not found"
    d = await check(client, tenant, ref="agent_made", feature="x")
    assert d["reason"] != "Customer not found"


async def test_side_effects_are_dropped_when_the_unit_of_work_rolls_back(ctx, tenant):
    env = tenant.env_ids["test"]
    emitted = []

    async def hook(name, principal, payload):
        emitted.append(name)

    ctx.emit_hook = hook
    before = ctx.generation(env)
    principal = await ctx.keys.resolve(tenant.key("admin"))
    with pytest.raises(RuntimeError):
        async with ctx.db.unit_of_work() as s:
            ctx.changed(s, env)
            ctx.announce(s, "customer.created", principal, {})
            assert ctx.generation(env) == before  # nothing before the commit
            raise RuntimeError("boom")
    assert ctx.generation(env) == before and emitted == []
    async with ctx.db.unit_of_work() as s:
        ctx.changed(s, env)
        ctx.announce(s, "customer.created", principal, {})
        assert ctx.generation(env) == before and emitted == []
    assert ctx.generation(env) == before + 1 and emitted == ["customer.created"]


# --------------------------------------------------------------------------- event time


def credit_rule() -> dict:
    return {
        "pricing": {"model": "usage", "usage_unit_type": "tokens", "price_per_unit": "0.10"},
        "credits": {"denomination": "AI_TOKENS"},
    }


async def credit_setup(ctx, env):
    from tests.metering_factories import give_credits, metered_setup

    setup = await metered_setup(ctx, env, rule=credit_rule())
    pool = await give_credits(ctx, env, "cus_1", "AI_TOKENS", "100")
    return setup, pool


async def balance(ctx, pool_id):
    from tanso_mcp.db.models import CreditPool

    async with ctx.db.reader() as s:
        return (await s.get(CreditPool, pool_id)).balance_q


@pytest.mark.parametrize("path", ["single", "batch", "mcp"])
async def test_an_event_older_than_the_maximum_age_is_refused(ctx, client, tenant, path):
    env = tenant.env_ids["test"]
    _, pool = await credit_setup(ctx, env)
    old = event("old", 5, occurredAt="2020-01-01T00:00:00Z")
    if path == "single":
        r = await client.post(f"{API}/events", json=old, headers=tenant.headers("client"))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
    elif path == "batch":
        r = await client.post(
            f"{API}/events/batch", json={"events": [old]}, headers=tenant.headers("client")
        )
        assert r.status_code == 200, r.text
        err = r.json()["data"]["results"][0]["error"]
        err["field"] = err["field"].removeprefix("events[0].")
    else:
        from tests.mcp_helpers import fails, inmemory

        async with inmemory(ctx, tenant.key("admin")) as mcp:
            err = await fails(mcp, "ingestEvent", old)
    assert err["field"] == "occurredAt"
    assert "35 days in the past" in err["message"]
    assert "the test environment's clock says it is 2026-01-15T10:00:00.000Z" in err["message"]
    assert await balance(ctx, pool) == 100 * 10_000


async def test_the_future_rule_names_the_environment_clock(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await credit_setup(ctx, env)
    r = await client.post(
        f"{API}/events",
        json=event("future", 1, occurredAt="2026-01-15T10:10:00Z"),
        headers=tenant.headers("client"),
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == "occurredAt"
    assert "300 seconds in the future" in err["message"]
    assert "the test environment's clock says it is 2026-01-15T10:00:00.000Z" in err["message"]


@pytest.mark.parametrize("path", ["single", "batch"])
async def test_an_event_before_the_subscription_start_draws_no_credits(
    ctx, client, tenant, settings, path
):
    settings.event_max_age_days = 36_500  # let a 2020 event through the age rule
    env = tenant.env_ids["test"]
    _, pool = await credit_setup(ctx, env)
    old = event("old", 5, occurredAt="2020-01-01T00:00:00Z")
    if path == "single":
        r = await client.post(f"{API}/events", json=old, headers=tenant.headers("client"))
        assert r.status_code == 201, r.text
        data = r.json()["data"]
    else:
        r = await client.post(
            f"{API}/events/batch", json={"events": [old]}, headers=tenant.headers("client")
        )
        data = r.json()["data"]["results"][0]
        assert data["status"] == "accepted", data
    assert data.get("creditsDeducted", 0) == 0
    assert await balance(ctx, pool) == 100 * 10_000
    d = await check(client, tenant)
    assert d["usage"]["used"] == 0
    # an in-period event still draws
    r = await client.post(f"{API}/events", json=event("now", 5), headers=tenant.headers("client"))
    assert r.json()["data"]["creditsDeducted"] == 5


# --------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("hard", [True, False])
async def test_simulation_tells_the_credit_truth(ctx, client, tenant, hard):
    from tests.mcp_helpers import inmemory, ok
    from tests.metering_factories import give_credits, metered_setup

    env = tenant.env_ids["test"]
    await metered_setup(ctx, env, rule=credit_rule())
    await give_credits(ctx, env, "cus_1", "AI_TOKENS", "600", hard_limit=hard)
    r = await client.post(
        f"{API}/entitlements",
        json={
            "customerReferenceId": "cus_1",
            "featureKey": "api_calls",
            "track": {"usageUnits": 700},
        },
        headers=tenant.headers("client"),
    )
    assert r.status_code == 200, r.text
    rest = r.json()["data"]
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        tool = await ok(
            mcp,
            "evaluateEntitlement",
            {"customerReferenceId": "cus_1", "featureKey": "api_calls", "requestedUsage": 700},
        )
    for d in (rest, tool):
        sim = d["simulation"]
        assert sim["creditsRequired"] == 700 and sim["creditsAvailable"] == 600
        assert sim["wouldExceedCredits"] is True
        assert sim["wouldExceedLimit"] is hard
        assert d["allowed"] is (not hard)
        if hard:
            assert d["reason"] == "Credit limit reached"
    # within the credits, nothing is exceeded
    r = await client.post(
        f"{API}/entitlements",
        json={
            "customerReferenceId": "cus_1",
            "featureKey": "api_calls",
            "track": {"usageUnits": 600},
        },
        headers=tenant.headers("client"),
    )
    sim = r.json()["data"]["simulation"]
    assert sim["wouldExceedCredits"] is False and sim["wouldExceedLimit"] is False


async def test_batch_limit_counts_events_attributed_in_the_batch(ctx, client, tenant, clock):
    """An event attributed by the rule inside a batch and a later one naming that same
    subscription share its counter: the second one sees the first one's usage."""
    env = tenant.env_ids["test"]
    first, _ = await two_subscriptions(ctx, env, clock)
    for n in range(3):
        r = await client.post(
            f"{API}/events",
            json=event(f"a{n}", subscriptionId=first),
            headers=tenant.headers("client"),
        )
        assert r.status_code == 201, r.text
    r = await client.post(
        f"{API}/events/batch",
        json={"events": [event("b0", 2), event("b1", subscriptionId=first)]},
        headers=tenant.headers("client"),
    )
    results = r.json()["data"]["results"]
    assert [x.get("usageLimitExceeded", False) for x in results] == [False, True]


async def test_a_check_does_not_count_credits_past_their_expiry(ctx, client, tenant):
    """No expiry job has run: the check still leaves the expired grant out, as the next
    ingest (which expires it before drawing) does."""
    from tests.metering_factories import give_credits, metered_setup

    env = tenant.env_ids["test"]
    await metered_setup(ctx, env, rule=credit_rule())
    await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", "5", hard_limit=True, expires_at=START + timedelta(days=1)
    )
    assert (await check(client, tenant))["allowed"] is True  # cached
    async with ctx.db.unit_of_work() as s:
        await ctx.clocks.set_test_clock(s, env, START + timedelta(days=2))
    ctx.clocks.forget(env)
    d = await check(client, tenant)
    assert d["allowed"] is False and d["reason"] == "Credit limit reached"
    r = await client.post(f"{API}/events", json=event("late"), headers=tenant.headers("client"))
    assert r.status_code == 409, r.text

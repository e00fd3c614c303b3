"""Entitlement checks and evaluation: decisions, reasons, simulation, audit events, the
list endpoint, windows (reset / accumulate), and the in-process cache (no database read
when warm, never stale after a write in this process)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update

from tanso_mcp.db.models import Entitlement, Event, Invoice, Subscription, UsageCounter
from tanso_mcp.domain.periods import add_months
from tanso_mcp.settings import Settings
from tests.conftest import START
from tests.metering_factories import make_plan, metered_setup, subscribe

pytestmark = pytest.mark.anyio

API = "/api/v1/client"


@pytest.fixture
def settings(db_url) -> Settings:
    # caches on (the default conftest turns the key cache off)
    return Settings(
        database_url=db_url,
        key_cache_seconds=600,
        entitlement_cache_seconds=600,
        jobs_enabled=False,
        max_body_bytes=65536,
    )


async def check(client, tenant, ref="cus_1", feature="api_calls", role="read"):
    r = await client.get(f"{API}/entitlements/{ref}/{feature}", headers=tenant.headers(role))
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def ingest(client, tenant, key, units=1, ref="cus_1", feature="api_calls", **kw):
    r = await client.post(
        f"{API}/events",
        json={
            "eventIdempotencyKey": key,
            "eventName": "call",
            "customerReferenceId": ref,
            "featureKey": feature,
            "usageUnits": units,
            **kw,
        },
        headers=tenant.headers("client"),
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["data"]


class StatementCounter:
    """Counts SQL statements sent through the application's SQLAlchemy engine."""

    def __init__(self, ctx):
        self.n = 0
        self.engine = ctx.db.engine.sync_engine

    def __enter__(self):
        sa_event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc):
        sa_event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args, **kw):
        self.n += 1


async def test_denials_are_answers_not_errors(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env, extra_features={"gate": None})
    d = await check(client, tenant, ref="nobody")
    assert d["allowed"] is False and d["isAllowed"] is False
    assert d["reason"] == "Customer not found"
    assert d["meta"] == {"reason": {"description": "Customer not found"}}
    d = await check(client, tenant, feature="no_such_feature")
    assert d["allowed"] is False and "not found" in d["reason"]
    await make_plan(ctx, env, key="other", features={"other_feature": None})
    d = await check(client, tenant, feature="other_feature")
    assert d["allowed"] is False
    assert d["reason"] == "No active subscription found for this feature"
    d = await check(client, tenant, feature="gate")
    assert d == {
        "customerReferenceId": "cus_1",
        "referenceCustomerId": "cus_1",
        "featureKey": "gate",
        "allowed": True,
        "isAllowed": True,
        "subscriptionId": d["subscriptionId"],
    }
    d = await check(client, tenant)
    assert d["usage"] == {"used": 0, "limit": 100, "remaining": 100}


async def test_past_due_revoked_and_cancelled_grant_nothing(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env)
    sub = s["subscription_id"]
    assert (await check(client, tenant))["allowed"] is True
    # past due: a PAST_DUE invoice on the subscription
    async with ctx.db.unit_of_work() as s_:
        c = await s_.scalar(select(Subscription.customer_id).where(Subscription.id == sub))
        s_.add(
            Invoice(
                environment_id=env,
                customer_id=c,
                subscription_id=sub,
                type="REGULAR",
                status="PAST_DUE",
                amount_minor=1000,
                currency="USD",
                created_at=START,
                modified_at=START,
            )
        )
    ctx.invalidate(env)
    assert (await check(client, tenant))["allowed"] is False
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(update(Invoice).values(status="PAID"))
    ctx.invalidate(env)
    assert (await check(client, tenant))["allowed"] is True
    # revoked entitlement
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(update(Entitlement).values(revoked_at=START))
    ctx.invalidate(env)
    assert (await check(client, tenant))["allowed"] is False
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(update(Entitlement).values(revoked_at=None))
    ctx.invalidate(env)
    assert (await check(client, tenant))["allowed"] is True
    # cancelled
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(update(Subscription).values(is_active=False, cancelled_at=START))
    ctx.invalidate(env)
    d = await check(client, tenant)
    assert d["allowed"] is False
    # events of a customer without an entitled subscription are stored, not counted
    data = await ingest(client, tenant, "after-cancel", 5)
    assert data["eventId"]
    async with ctx.db.reader() as s_:
        e = await s_.scalar(select(Event))
        assert e.subscription_id is None
        assert int(await s_.scalar(select(func.count()).select_from(UsageCounter))) == 0


async def test_any_active_subscription_granting_the_feature_allows(ctx, client, tenant):
    env = tenant.env_ids["test"]
    capped = json.dumps(
        {"pricing": {"model": "usage", "usage_unit_type": "u", "price_per_unit": 1, "max_usage": 2}}
    )
    p1 = await make_plan(ctx, env, key="small", features={"api_calls": capped})
    p2 = await make_plan(ctx, env, key="big", features={"api_calls": None})
    await subscribe(ctx, env, "cus_1", p1["plan_id"])
    d = await ingest(client, tenant, "a", 2)
    assert d["eventId"]
    assert (await check(client, tenant))["allowed"] is False
    await subscribe(ctx, env, "cus_1", p2["plan_id"])
    d = await check(client, tenant)
    assert d["allowed"] is True and "usage" not in d


async def test_evaluate_simulates_and_records_audit_event_never_usage(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    await ingest(client, tenant, "u1", 40)
    body = {
        "customerReferenceId": "cus_1",
        "featureKey": "api_calls",
        "track": {"eventName": "llm.generate", "usageUnits": 60},
        "context": {"idempotencyKey": "req_abc123", "flowId": "flow_42"},
    }
    r = await client.post(f"{API}/entitlements", json=body, headers=tenant.headers("client"))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["allowed"] is True and d["flowId"] == "flow_42"
    assert d["simulation"] == {
        "requestedUsage": 60,
        "projectedUsage": 100,
        "projectedRemaining": 0,
        "wouldExceedLimit": False,
    }
    body["track"]["usageUnits"] = 61
    body["context"]["idempotencyKey"] = "req_abc124"
    d = (await client.post(f"{API}/entitlements", json=body, headers=tenant.headers())).json()[
        "data"
    ]
    assert d["allowed"] is False and d["reason"] == "Proposed usage would exceed limit"
    assert d["simulation"]["wouldExceedLimit"] is True
    # `usage` is accepted as the simulation key; /check is the same evaluation
    r = await client.post(
        f"{API}/entitlements/check",
        json={
            "customerReferenceId": "cus_1",
            "featureKey": "api_calls",
            "usage": {"usageUnits": 1},
        },
        headers=tenant.headers("client"),
    )
    assert r.json()["data"]["simulation"]["requestedUsage"] == 1
    r = await client.post(
        f"{API}/entitlements/check",
        json={"customerReferenceId": "cus_1", "featureKey": "api_calls"},
        headers=tenant.headers("client"),
    )
    d = r.json()["data"]
    assert d["allowed"] is True and "simulation" not in d
    async with ctx.db.reader() as s_:
        audits = (
            (await s_.execute(select(Event).where(Event.event_type == "ENTITLEMENT_CHECKED")))
            .scalars()
            .all()
        )
        counter = await s_.scalar(select(UsageCounter.used_q))
    assert len(audits) == 4
    assert all(a.usage_q == 0 and a.billable_q == 0 for a in audits)
    assert {a.idempotency_key for a in audits} >= {"req_abc123", "req_abc124"}
    first = next(a for a in audits if a.idempotency_key == "req_abc123")
    assert first.context["sys_simulation"] is True and first.context["allowed"] is True
    assert first.event_name == "llm.generate"
    assert counter == 400000  # the audit records never counted
    assert (await check(client, tenant))["usage"]["used"] == 40
    # unknown customer: allowed false, no audit record, not an error
    r = await client.post(
        f"{API}/entitlements",
        json={"customerReferenceId": "ghost", "featureKey": "api_calls"},
        headers=tenant.headers("client"),
    )
    assert r.status_code == 200 and r.json()["data"]["allowed"] is False


@pytest.mark.parametrize(
    "body,field",
    [
        ({"featureKey": "api_calls"}, "customerReferenceId"),
        ({"customerReferenceId": "c" * 129, "featureKey": "x"}, "customerReferenceId"),
        (
            {"customerReferenceId": "c", "featureKey": "x", "track": {"usageUnits": -1}},
            "usageUnits",
        ),
        ({"customerReferenceId": "c", "featureKey": "x", "track": {"usageUnits": 0}}, "usageUnits"),
        ({"customerReferenceId": "c", "featureKey": "x", "track": [1]}, "track"),
        ({"customerReferenceId": "c", "featureKey": "x", "extra": 1}, "extra"),
        (
            {"customerReferenceId": "c", "featureKey": "x", "track": {}, "usage": {}},
            "usage",
        ),
    ],
)
async def test_evaluate_bad_input(ctx, client, tenant, body, field):
    r = await client.post(f"{API}/entitlements", json=body, headers=tenant.headers("client"))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field


async def test_entitlement_list(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env, extra_features={"gate": None})
    await ingest(client, tenant, "l1", 7)
    r = await client.get(f"{API}/entitlements/cus_1", headers=tenant.headers("read"))
    assert r.status_code == 200
    body = r.json()
    assert body["pagination"]["total"] == 1
    (sub,) = body["data"]
    assert sub["subscriptionId"] == s["subscription_id"] and sub["planKey"] == "metered"
    by_key = {e["featureKey"]: e for e in sub["entitlements"]}
    assert by_key["gate"]["allowed"] is True and "usage" not in by_key["gate"]
    assert by_key["api_calls"]["usage"] == {"used": 7, "limit": 100, "remaining": 93}
    r = await client.get(f"{API}/entitlements/nobody", headers=tenant.headers("read"))
    assert r.status_code == 404


async def test_reset_window_restarts_each_period_accumulate_does_not(ctx, client, tenant):
    env = tenant.env_ids["test"]
    reset = {
        "pricing": {"model": "usage", "usage_unit_type": "u", "price_per_unit": 1, "max_usage": 10}
    }
    acc = {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "u",
            "price_per_unit": 1,
            "max_usage": 10,
            "reset_mode": "accumulate",
        }
    }
    s = await metered_setup(ctx, env, rule=reset, extra_features={"acc": json.dumps(acc)})
    await ingest(client, tenant, "r1", 8)
    await ingest(client, tenant, "a1", 8, feature="acc")
    # renewal: the subscription moves to its next period (as billing's job does)
    start = START.replace(hour=0)
    nxt = add_months(start, 1)
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(
            update(Subscription)
            .where(Subscription.id == s["subscription_id"])
            .values(current_period_start=nxt, current_period_end=add_months(start, 2))
        )
        await ctx.clocks.set_test_clock(s_, env, nxt + timedelta(hours=1))
    ctx.clocks.forget(env)
    ctx.invalidate(env)
    assert (await check(client, tenant))["usage"]["used"] == 0
    assert (await check(client, tenant, feature="acc"))["usage"]["used"] == 8
    await ingest(client, tenant, "r2", 5)
    d = await ingest(client, tenant, "a2", 5, feature="acc")
    assert d["usageLimitExceeded"] is False
    d = await ingest(client, tenant, "a3", 1, feature="acc")
    assert d["usageLimitExceeded"] is True  # 13 >= 10 over the subscription's lifetime
    assert (await check(client, tenant))["usage"]["used"] == 5
    # a late event of the previous period counts there, not in the current window
    await ingest(client, tenant, "late", 2, occurredAt=(nxt - timedelta(days=1)).isoformat())
    assert (await check(client, tenant))["usage"]["used"] == 5
    async with ctx.db.reader() as s_:
        windows = dict(
            (await s_.execute(select(UsageCounter.window_start, UsageCounter.used_q))).all()
        )
    assert windows[start] == 100000  # 8 + 2 late units in January's window
    assert windows[nxt] == 50000


async def test_warm_check_reads_no_database(ctx, client, tenant):
    env = tenant.env_ids["test"]
    s = await metered_setup(ctx, env)
    await check(client, tenant)  # warm: key, clock, customer, counter
    with StatementCounter(ctx) as sql:
        for _ in range(50):
            d = await check(client, tenant)
    assert sql.n == 0
    assert d["usage"]["used"] == 0
    # metering writes are published to the cache: still no read, never stale
    for i in range(1, 6):
        await ingest(client, tenant, f"w{i}", 3)
        with StatementCounter(ctx) as sql:
            d = await check(client, tenant)
        assert d["usage"]["used"] == 3 * i
        assert sql.n == 0
    # any other write in this process (here: revoking the entitlement) bumps the
    # environment's generation: the very next check sees it
    async with ctx.db.unit_of_work() as s_:
        await s_.execute(
            update(Entitlement)
            .where(Entitlement.subscription_id == s["subscription_id"])
            .values(revoked_at=START)
        )
    ctx.invalidate(env)
    assert (await check(client, tenant))["allowed"] is False


async def test_cache_off_reads_every_time(ctx, client, tenant):
    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    ctx.settings.entitlement_cache_seconds = 0
    from tanso_mcp.services.metering import metering

    metering(ctx).cache.ttl = 0
    await check(client, tenant)
    with StatementCounter(ctx) as sql:
        await check(client, tenant)
    assert sql.n > 0


async def test_concurrent_checks_share_one_load(ctx, client, tenant):
    import asyncio

    from tanso_mcp.services.metering import metering

    env = tenant.env_ids["test"]
    await metered_setup(ctx, env)
    cache = metering(ctx).cache
    before = cache.loads
    results = await asyncio.gather(*(check(client, tenant) for _ in range(30)))
    assert all(r["allowed"] for r in results)
    assert cache.loads - before <= 3  # one customer load, one counter load (+ slack)

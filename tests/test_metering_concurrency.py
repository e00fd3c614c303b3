"""Concurrency proof: many concurrent events for one customer and feature with a
usage limit and hard-limited credits — as asyncio tasks through the HTTP API (one
process, group commit), and as separate OS processes each with its own writer — lose or
double-count no unit, accept no duplicate twice, never overdraw the pool, and keep the
credit ledger invariant. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import CreditPool, Event, UsageCounter
from tests.metering_factories import give_credits, ledger_problems, make_plan, subscribe

pytestmark = pytest.mark.anyio

API = "/api/v1/client"
ROOT = Path(__file__).resolve().parent.parent
LIMIT = 30
CREDITS = 60


async def setup(ctx, env) -> tuple[str, str]:
    capped = {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "u",
            "price_per_unit": "0.5",
            "max_usage": LIMIT,
        }
    }
    paid = {
        "pricing": {"model": "usage", "usage_unit_type": "u", "price_per_unit": "0.5"},
        "credits": {"denomination": "AI_TOKENS"},
    }
    plan = await make_plan(
        ctx,
        env,
        key="race",
        timing="IN_ARREARS",
        features={"capped": json.dumps(capped), "paid": json.dumps(paid)},
    )
    sub = await subscribe(ctx, env, "cus_1", plan["plan_id"])
    pool = await give_credits(
        ctx, env, "cus_1", "AI_TOKENS", str(CREDITS), hard_limit=True, subscription_id=sub
    )
    return sub, pool


async def totals(ctx, feature_key: str) -> dict[str, int]:
    async with ctx.db.reader() as s:
        from tanso_mcp.db.models import Feature

        fid = await s.scalar(select(Feature.id).where(Feature.key == feature_key))
        row = (
            await s.execute(
                select(
                    func.count(),
                    func.count(func.distinct(Event.idempotency_key)),
                    func.coalesce(func.sum(Event.billable_q), 0),
                    func.coalesce(func.sum(Event.credits_deducted_q), 0),
                ).where(Event.feature_id == fid)
            )
        ).one()
        counter = await s.scalar(
            select(func.coalesce(func.sum(UsageCounter.used_q), 0)).where(
                UsageCounter.feature_id == fid
            )
        )
    return {
        "events": int(row[0]),
        "keys": int(row[1]),
        "billable_q": int(row[2]),
        "credits_q": int(row[3]),
        "counter_q": int(counter),
    }


async def pool_balance(ctx, pool_id) -> int:
    async with ctx.db.reader() as s:
        return (await s.get(CreditPool, pool_id)).balance_q


async def test_concurrent_requests_in_one_process(ctx, client, tenant):
    env = tenant.env_ids["test"]
    _, pool = await setup(ctx, env)
    h = tenant.headers("client")

    async def send(key: str, feature: str):
        r = await client.post(
            f"{API}/events",
            json={
                "eventIdempotencyKey": key,
                "eventName": "race",
                "customerReferenceId": "cus_1",
                "featureKey": feature,
                "usageUnits": 1,
            },
            headers=h,
        )
        body = r.json()
        if r.status_code in (200, 201):
            return key, "limit" if body["data"]["usageLimitExceeded"] else "accepted"
        return key, body["error"]["code"]

    keys = [f"c{i}" for i in range(100)]
    dup = keys[:20]  # sent twice, at the same time
    paid = [f"p{i}" for i in range(100)]
    jobs = [send(k, "capped") for k in keys + dup] + [send(k, "paid") for k in paid + paid[:10]]
    results = await asyncio.gather(*jobs)
    capped_results = Counter(r for k, r in results[:120])
    paid_results = Counter(r for k, r in results[120:])
    # every distinct key stored exactly once; each duplicate answered once as such
    assert capped_results["duplicate_event"] == 20
    assert capped_results["accepted"] == LIMIT  # exactly the limit is billable
    assert capped_results["limit"] == 100 - LIMIT
    t = await totals(ctx, "capped")
    assert t == {
        "events": 100,
        "keys": 100,
        "billable_q": LIMIT * 10_000,
        "credits_q": 0,
        "counter_q": LIMIT * 10_000,
    }
    # hard-limited credits: exactly CREDITS events fit, the rest are refused, none stored
    assert paid_results["accepted"] == CREDITS
    assert paid_results["insufficient_credits"] + paid_results["duplicate_event"] == 110 - CREDITS
    t = await totals(ctx, "paid")
    assert t["events"] == CREDITS and t["credits_q"] == CREDITS * 10_000
    assert t["counter_q"] == CREDITS * 10_000
    assert await pool_balance(ctx, pool) == 0
    assert await ledger_problems(ctx, env) == []


async def test_concurrent_processes_share_nothing_but_the_database(ctx, tenant, db_url):
    env = tenant.env_ids["test"]
    _, pool = await setup(ctx, env)
    workers = 4
    shared = [f"shared{i}" for i in range(15)]  # every process sends these keys
    start_at = time.time() + 3.0
    procs = []
    for w in range(workers):
        for feature in ("capped", "paid"):
            own = [f"{feature}-w{w}-{i}" for i in range(25)]
            keys = own + [f"{feature}-{k}" for k in shared]
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.metering_worker",
                    db_url,
                    tenant.key("client"),
                    str(start_at),
                    feature,
                    *keys,
                    cwd=str(ROOT),
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    results: dict[str, list[str]] = {}
    for (out, err), p in zip(outs, procs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        for key, status in json.loads(out.decode().strip().splitlines()[-1]).items():
            results.setdefault(key, []).append(status)
    for feature in ("capped", "paid"):
        for k in shared:
            statuses = results[f"{feature}-{k}"]
            assert len(statuses) == workers
            # exactly one process stored it; every other one was told "duplicate"
            # (or, for credits, refused before storing anything)
            assert statuses.count("accepted") <= 1
            if feature == "capped":
                assert statuses.count("accepted") == 1, statuses
                assert statuses.count("duplicate") == workers - 1, statuses
    distinct = workers * 25 + len(shared)
    t = await totals(ctx, "capped")
    assert t["events"] == t["keys"] == distinct
    assert t["billable_q"] == t["counter_q"] == LIMIT * 10_000
    t = await totals(ctx, "paid")
    assert t["events"] == t["keys"] == CREDITS
    assert t["credits_q"] == t["counter_q"] == CREDITS * 10_000
    accepted_paid = sum(1 for k, v in results.items() if k.startswith("paid-") and "accepted" in v)
    assert accepted_paid == CREDITS
    assert await pool_balance(ctx, pool) == 0
    assert await ledger_problems(ctx, env) == []


async def test_counter_read_without_lock_is_checked_again_when_locked(ctx, tenant, monkeypatch):
    """PostgreSQL: a batch whose events cannot reach the limit reads its counter without
    a lock and locks it only before writing. When another writer commits usage in between
    that brings the limit within reach, the batch is rolled back and decided again on the
    locked counter: exactly the units left under the limit are billable."""
    if ctx.db.dialect == "sqlite":
        pytest.skip("SQLite writers hold the database's write lock for the whole batch")
    from sqlalchemy import text
    from sqlalchemy.util import await_

    from tanso_mcp.services.metering import batch
    from tanso_mcp.services.metering.inputs import parse_event
    from tanso_mcp.services.metering.service import metering

    env = tenant.env_ids["test"]
    await setup(ctx, env)
    writer = metering(ctx).writer
    writer.fast = None  # the general path (the one-statement lane: test_metering_pgfast)
    now = ctx.clocks.system_now()

    def events(prefix: str, n: int):
        return [
            parse_event(
                {
                    "eventIdempotencyKey": f"{prefix}{i}",
                    "eventName": "race",
                    "customerReferenceId": "cus_1",
                    "featureKey": "capped",
                    "usageUnits": 1,
                },
                environment_id=env,
                now=now,
                future_skew_seconds=300,
            )
            for i in range(n)
        ]

    (first,) = await writer.submit(events("warm", 1))  # the counter row exists
    assert first.status == "accepted" and not first.limit_exceeded
    injected = []
    original = batch._Env._late_lock

    async def other_writer() -> None:  # another process commits 27 units meanwhile
        async with ctx.db.engine.begin() as conn:
            await conn.execute(text("UPDATE usage_counters SET used_q = used_q + 270000"))

    def late_lock(self, touched, limits):
        if not injected:
            injected.append(True)
            await_(other_writer())
        return original(self, touched, limits)

    monkeypatch.setattr(batch._Env, "_late_lock", late_lock)
    outcomes = await writer.submit(events("late", 5))
    assert injected  # the first attempt read the counter without a lock
    # 1 + 27 units were used: 2 more fit under the limit of 30, the other 3 exceed it
    assert [o.limit_exceeded for o in outcomes] == [False, False, True, True, True]
    t = await totals(ctx, "capped")
    assert t["events"] == 6 and t["billable_q"] == 3 * 10_000
    assert t["counter_q"] == LIMIT * 10_000

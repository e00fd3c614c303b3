"""The metering writer's lanes: on PostgreSQL, under a backlog, a process writes two
group-commit batches at once, and their commits may be answered in either order. The cache keeps the later
state (counters and pool consumption only grow), and the lanes together still count
every event exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Event, UsageCounter
from tanso_mcp.services.metering import writer as writer_module
from tanso_mcp.services.metering.batch import Effects
from tanso_mcp.services.metering.cache import PoolInfo
from tanso_mcp.services.metering.service import metering
from tests.metering_factories import metered_setup, usage_events

pytestmark = pytest.mark.anyio

KEY = ("sub_1", "feat_1", datetime(2026, 1, 1, tzinfo=UTC))


async def test_an_earlier_commit_answered_late_leaves_the_counter_alone(ctx, tenant):
    env = tenant.env_ids["test"]
    cache = metering(ctx).cache
    counters = cache.env(env).counters
    generations = {env: ctx.generation(env)}
    cache.apply(Effects(counters={env: {KEY: (200, 20)}}), generations)
    cache.apply(Effects(counters={env: {KEY: (100, 10)}}), generations)  # the earlier one
    assert counters[KEY][:2] == (200, 20)
    cache.apply(Effects(counters={env: {KEY: (300, 30)}}), generations)
    assert counters[KEY][:2] == (300, 30)


async def test_an_earlier_commit_answered_late_leaves_the_pool_alone(ctx, tenant):
    env = tenant.env_ids["test"]
    cache = metering(ctx).cache
    pool = PoolInfo("pool_1", "credits", 700, 1000, 300, True, "ACTIVE", {})
    cache.env(env).pools_by_id[pool.id] = pool
    generations = {env: ctx.generation(env)}

    def drawn(balance: int, consumed: int) -> Effects:
        values = {"balance_q": balance, "total_consumed_q": consumed, "customer_id": "c"}
        return Effects(pools={env: {pool.id: values}})

    cache.apply(drawn(800, 200), generations)  # committed before the values held
    assert (pool.balance_q, pool.total_consumed_q) == (700, 300)
    cache.apply(drawn(600, 400), generations)
    assert (pool.balance_q, pool.total_consumed_q) == (600, 400)


async def _metered_customer(ctx, env):
    rule = {"pricing": {"model": "usage", "usage_unit_type": "u", "price_per_unit": "1"}}
    await metered_setup(ctx, env, rule=rule, feature="metered", plan_key="lanes")


def _units(ctx, env, count: int, size: int) -> list[list]:
    return [
        usage_events(ctx, env, [f"u{n}-{i}" for i in range(size)], feature="metered", name="lanes")
        for n in range(count)
    ]


def _count_overlap(writer, monkeypatch) -> dict[str, int]:
    seen = {"in_flight": 0, "peak": 0}
    execute = writer._execute

    async def counting(items):
        seen["in_flight"] += 1
        seen["peak"] = max(seen["peak"], seen["in_flight"])
        try:
            return await execute(items)
        finally:
            seen["in_flight"] -= 1

    monkeypatch.setattr(writer, "_execute", counting)
    return seen


async def test_two_lanes_write_at_once_and_count_every_event_once(ctx, tenant, monkeypatch):
    """Many concurrent requests on one counter: on PostgreSQL both lanes take batches
    (their statements overlap in time), every event is stored once and the counter and
    the cache hold the sum."""
    env = tenant.env_ids["test"]
    await _metered_customer(ctx, env)
    writer = metering(ctx).writer
    seen = _count_overlap(writer, monkeypatch)
    # a lane takes at most 100 queued events, so the burst below needs several batches
    monkeypatch.setattr(writer, "max_events", 100)

    units = _units(ctx, env, 60, 20)
    results = await asyncio.gather(*(writer.submit(unit) for unit in units))
    assert all(o.status == "accepted" for outcomes in results for o in outcomes)
    async with ctx.db.reader() as s:
        assert await s.scalar(select(func.count()).select_from(Event)) == 1200
        used = await s.scalar(select(func.sum(UsageCounter.used_q)))
    assert used == 1200 * 10_000
    assert seen["peak"] == (1 if ctx.db.dialect == "sqlite" else 2)


async def test_the_second_lane_waits_for_a_backlog(ctx, tenant, monkeypatch):
    """Fewer queued events than ``SECOND_LANE_AT``: one lane writes them all, batch
    after batch, and the second stays idle."""
    env = tenant.env_ids["test"]
    await _metered_customer(ctx, env)
    writer = metering(ctx).writer
    seen = _count_overlap(writer, monkeypatch)
    monkeypatch.setattr(writer, "max_events", 10)

    units = _units(ctx, env, writer_module.SECOND_LANE_AT - 1, 1)
    results = await asyncio.gather(*(writer.submit(unit) for unit in units))
    assert all(o.status == "accepted" for outcomes in results for o in outcomes)
    assert writer.batches >= len(units) // 10
    assert seen["peak"] == 1

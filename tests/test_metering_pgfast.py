"""PostgreSQL's one-statement lane of the metering writer (services/metering/pgfast.py):
plain events are written from what the lane remembers of the customer and feature, and
every remembered fact is checked again inside the statement — a change committed
behind the process's back (another process, no cache invalidation here) costs a
fallback to the general path, never a wrong answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tanso_mcp.services.metering import pgfast
from tanso_mcp.services.metering.inputs import parse_event
from tanso_mcp.services.metering.pgfast import _micros, _texts, max_used_before
from tanso_mcp.services.metering.service import metering
from tests.metering_factories import make_plan, subscribe, usage_events

pytestmark = pytest.mark.anyio

LIMIT = 30


@pytest.fixture(params=["one statement", "two statements"])
def pg(ctx, request, monkeypatch):
    """Each test runs with the lane's small-batch form (one statement) and its
    large-batch form (events, then counters, in one transaction)."""
    if ctx.db.dialect == "sqlite":
        pytest.skip("the one-statement lane is PostgreSQL's")
    if request.param == "two statements":
        monkeypatch.setattr(pgfast, "SPLIT_AT", 1)
    return ctx


async def setup(ctx, env) -> str:
    capped = {
        "pricing": {
            "model": "usage",
            "usage_unit_type": "u",
            "price_per_unit": "0.5",
            "max_usage": LIMIT,
        }
    }
    plan = await make_plan(
        ctx, env, key="lane", timing="IN_ARREARS", features={"capped": json.dumps(capped)}
    )
    return await subscribe(ctx, env, "cus_1", plan["plan_id"])


def events(ctx, env, prefix: str, n: int, units: int = 1):
    keys = [f"{prefix}{i}" for i in range(n)]
    return usage_events(ctx, env, keys, feature="capped", name="lane", units=units)


async def sql(ctx, statement: str) -> list:
    async with ctx.db.engine.begin() as conn:
        result = await conn.execute(text(statement))
        return list(result) if result.returns_rows else []


async def test_plain_events_take_the_lane(pg, tenant):
    env = tenant.env_ids["test"]
    sub = await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "warm", 1))  # creates the counter row
    hits = writer.fast.hits
    outcomes = await writer.submit(events(pg, env, "a", 4))
    assert writer.fast.hits == hits + 1
    assert [(o.status, o.subscription_id, o.limit_exceeded) for o in outcomes] == [
        ("accepted", sub, False)
    ] * 4
    rows = await sql(
        pg,
        "SELECT subscription_id, billable_q, revenue_micros FROM events "
        "WHERE idempotency_key LIKE 'a%'",
    )
    assert sorted(rows) == [(sub, 10_000, 500_000)] * 4
    assert await sql(pg, "SELECT used_q, overage_q FROM usage_counters") == [(50_000, 50_000)]


async def test_a_change_made_elsewhere_is_seen_by_the_next_batch(pg, tenant):
    """The subscription ends behind the process's back (raw SQL: no cache invalidation,
    as when another process commits and its notification has not arrived): the lane's
    fingerprint no longer matches, nothing is written by it, and the general path
    stores the event without the subscription."""
    env = tenant.env_ids["test"]
    sub = await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "warm", 2))
    (o,) = await writer.submit(events(pg, env, "before", 1))
    assert o.subscription_id == sub
    fallbacks = writer.fast.fallbacks
    await sql(pg, f"UPDATE subscriptions SET is_active = false WHERE id = '{sub}'")
    (o,) = await writer.submit(events(pg, env, "after", 1))
    assert writer.fast.fallbacks == fallbacks + 1
    assert o.status == "accepted" and o.subscription_id is None
    rows = await sql(pg, "SELECT subscription_id FROM events WHERE idempotency_key = 'after0'")
    assert rows == [(None,)]
    assert await sql(pg, "SELECT used_q FROM usage_counters") == [(30_000,)]
    # reloaded: the lane takes the next event again, still without the subscription
    hits = writer.fast.hits
    (o,) = await writer.submit(events(pg, env, "later", 1))
    assert writer.fast.hits == hits + 1 and o.subscription_id is None
    rows = await sql(
        pg, "SELECT subscription_id, revenue_micros FROM events WHERE idempotency_key = 'later0'"
    )
    assert rows == [(None, None)]


async def test_the_lane_stores_every_value_as_sent(pg, tenant):
    """The events' columns travel as one joined string each: keys holding commas,
    quotes, braces or backslashes arrive intact, times keep their microseconds, and a
    key holding the separator itself sends its batch to the general path."""
    env = tenant.env_ids["test"]
    sub = await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "warm", 1))
    now = pg.clocks.system_now()
    odd = ["a,b", '{"q"}', "back\\slash", "NULL", "ünï ⌘", "x y", "", "'; --"]
    items = [
        parse_event(
            {
                "eventIdempotencyKey": f"k{key}",
                "eventName": f"n{key}",
                "customerReferenceId": "cus_1",
                "featureKey": "capped",
                "occurredAt": (now - timedelta(microseconds=7919 * i + 1)).isoformat(),
            },
            environment_id=env,
            now=now,
            future_skew_seconds=300,
        )
        for i, key in enumerate(odd)
    ]
    hits = writer.fast.hits
    outcomes = await writer.submit(items)
    assert writer.fast.hits == hits + 1
    assert {o.status for o in outcomes} == {"accepted"}
    rows = await sql(
        pg,
        "SELECT id, idempotency_key, event_name, occurred_at, created_at, subscription_id, "
        "usage_q, revenue_micros FROM events WHERE idempotency_key <> 'warm0'",
    )
    expected = [
        (o.event_id, i.key, i.event_name, i.occurred_at, now, sub, 10_000, 500_000)
        for o, i in zip(outcomes, items, strict=True)
    ]
    assert sorted(rows) == sorted(expected)

    (o,) = await writer.submit(events(pg, env, "sep\x1f", 1))
    assert o.status == "accepted" and writer.fast.hits == hits + 1
    rows = await sql(pg, "SELECT event_name FROM events WHERE idempotency_key = 'sep\x1f0'")
    assert rows == [("lane",)]


async def test_a_limit_brought_within_reach_elsewhere_is_decided_on_the_locked_counter(pg, tenant):
    """Another process commits usage this one has not seen: the lane plans the batch on
    the counter value it last saw, the statement finds the locked counter past the
    batch's bound and writes nothing, and the general path bills exactly the units left
    under the limit."""
    env = tenant.env_ids["test"]
    await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "warm", 1))
    await sql(pg, "UPDATE usage_counters SET used_q = used_q + 270000")  # 27 units
    hits, fallbacks = writer.fast.hits, writer.fast.fallbacks
    outcomes = await writer.submit(events(pg, env, "late", 5))
    assert (writer.fast.hits, writer.fast.fallbacks) == (hits, fallbacks + 1)
    # 1 + 27 units were used: 2 more fit under the limit of 30, the other 3 exceed it
    assert [o.limit_exceeded for o in outcomes] == [False, False, True, True, True]
    assert await sql(pg, "SELECT used_q FROM usage_counters") == [(LIMIT * 10_000,)]
    rows = await sql(pg, "SELECT count(*), sum(billable_q) FROM events")
    assert rows == [(6, 3 * 10_000)]


async def test_a_full_counter_is_not_sent_through_the_lane(pg, tenant):
    env = tenant.env_ids["test"]
    await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "fill", LIMIT))
    hits, fallbacks = writer.fast.hits, writer.fast.fallbacks
    (o,) = await writer.submit(events(pg, env, "over", 1))
    assert o.limit_exceeded
    assert (writer.fast.hits, writer.fast.fallbacks) == (hits, fallbacks)


async def test_a_key_stored_before_is_a_duplicate(pg, tenant):
    env = tenant.env_ids["test"]
    await setup(pg, env)
    writer = metering(pg).writer
    await writer.submit(events(pg, env, "k", 2))
    outcomes = await writer.submit(events(pg, env, "k", 3))
    assert [o.status for o in outcomes] == ["duplicate", "duplicate", "accepted"]
    assert await sql(pg, "SELECT count(*) FROM events") == [(3,)]
    assert await sql(pg, "SELECT used_q FROM usage_counters") == [(30_000,)]


def test_a_joined_column_refuses_its_separator_and_keeps_microseconds():
    assert _texts(["a", "b,c", "{d}"]) == "a\x1fb,c\x1f{d}"
    assert _texts(["a", "b\x1fc"]) is None  # would split into one value too many
    at = datetime(2026, 12, 1, 3, 4, 5, 123457, tzinfo=UTC)
    assert _micros([at, at]) == "1796094245123457,1796094245123457"
    assert _micros([datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)]) == "1"


def test_the_bound_sent_to_sql_follows_the_domain_rule():
    # a limit of 30 (scaled): from 25 used, 4 more stay below it; from 26 they reach it
    assert max_used_before(30, 4) == 25
    assert max_used_before(None, 4) is None
    assert max_used_before(3, 4) < 0


async def test_a_failing_lane_leaves_the_batch_to_the_general_path(pg, tenant, monkeypatch):
    """The lane is an optimisation: when it fails for a reason a retry would not cure
    (here: an exception inside it), the same batch is written by the general path."""
    env = tenant.env_ids["test"]
    sub = await setup(pg, env)
    writer = metering(pg).writer

    async def broken(self, raw, items):
        raise RuntimeError("lane bug")

    monkeypatch.setattr(pgfast.FastLane, "write", broken)
    fallbacks = writer.fast.fallbacks
    outcomes = await writer.submit(events(pg, env, "f", 3))
    assert [(o.status, o.subscription_id) for o in outcomes] == [("accepted", sub)] * 3
    assert writer.fast.fallbacks == fallbacks + 1
    stored = await sql(pg, f"SELECT count(*) FROM events WHERE environment_id = '{env}'")
    assert stored[0][0] == 3

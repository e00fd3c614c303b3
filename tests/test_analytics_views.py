"""Margin views over a mixed-cost scenario, checked to the micro-unit against figures
worked out by hand (tests/analytics_scenario.py), before, during and after the rollup."""

from __future__ import annotations

from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import text

from tanso_mcp.services.analytics_rollup import pending, roll_up, roll_up_chunk
from tests.analytics_scenario import (
    API,
    BY_CUSTOMER,
    BY_DAY,
    BY_FEATURE,
    BY_MODEL,
    BY_PLAN,
    check_rows,
    check_totals,
    send,
    send_batch,
    set_up,
)

pytestmark = pytest.mark.anyio


async def _margins(client, tenant, group: str, **q) -> dict:
    r = await client.get(
        f"{API}/analytics/margins",
        params={"groupBy": group, **q},
        headers=tenant.headers("read"),
    )
    assert r.status_code == 200, r.text
    return r.json()


async def _check_all(client, tenant) -> None:
    for group, expected in (
        ("customer", BY_CUSTOMER),
        ("feature", BY_FEATURE),
        ("model", BY_MODEL),
        ("plan", BY_PLAN),
    ):
        body = await _margins(client, tenant, group)
        check_rows(body["data"]["rows"], expected)
        check_totals(body["data"]["totals"])
        assert body["pagination"]["total"] == len(expected)
    r = await client.get(
        f"{API}/analytics/timeseries", params={"interval": "day"}, headers=tenant.headers("read")
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data["buckets"]) == 31
    for point in data["buckets"]:
        day = point["start"][:10]
        revenue, cost = BY_DAY.get(day, (0, 0))
        assert (point["revenueMicros"], point["costMicros"]) == (revenue, cost), point
    check_totals(data["totals"])


async def test_scenario_matches_hand_computed_figures_before_and_after_rollup(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    await _check_all(client, tenant)  # everything past the watermark: raw events
    await roll_up(ctx)
    async with ctx.db.reader() as s:
        assert not await pending(s)
        assert (
            await s.scalar(text("SELECT SUM(events) FROM analytics_rollup WHERE grain = 'h*'")) == 9
        )
    await _check_all(client, tenant)  # everything in the rollup
    await roll_up(ctx)  # nothing new: nothing added twice
    await _check_all(client, tenant)


async def test_batch_ingest_reports_the_same_cost_sources_and_figures(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send_batch(client, tenant)
    await _check_all(client, tenant)
    await roll_up(ctx)
    await _check_all(client, tenant)


async def test_views_exact_while_events_arrive_between_rollups(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send(client, tenant, {"e1", "e2", "e3"})
    await roll_up(ctx)
    await send(client, tenant, {"e4", "e5", "e6"})
    async with ctx.db.unit_of_work() as s:
        await roll_up_chunk(s)
    await send(client, tenant, {"e7", "e8", "e9"})
    await _check_all(client, tenant)  # rollup + events after the watermark
    await roll_up(ctx)
    await _check_all(client, tenant)


async def test_customer_view_mrr_and_sorting(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    await roll_up(ctx)
    r = await client.get(f"{API}/analytics/customers/A", headers=tenant.headers("read"))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["revenueMicros"] == 1_800_000 and d["costMicros"] == 3_102_000
    features = {row["key"]: row for row in d["byFeature"]}
    assert (
        features["chat"]["costMicros"] == 600_000 and features["search"]["costMicros"] == 2_502_000
    )
    models = {row["key"]: row["costMicros"] for row in d["byModel"]}
    assert models == {
        "(none)": 600_000,
        "my-model": 2_000,
        "gpt-4o-2024-08-06": 1_500_000,
        "gpt-4o-mini": 1_000_000,
    }
    assert Decimal(str(d["mrr"])) == Decimal("49.00")
    assert Decimal(str(d["effectiveMrr"])) == Decimal("50.80")  # 49 + this period's usage 1.80
    # B has no plan: it appears with its cost, MRR 0
    r = await client.get(f"{API}/analytics/customers/B", headers=tenant.headers("read"))
    d = r.json()["data"]
    assert d["costMicros"] == 250_000 and Decimal(str(d["mrr"])) == 0
    assert d["unknownModelEvents"] == 1
    # the two worst customers in one call
    body = await _margins(client, tenant, "customer", sort="grossMargin", order="asc", limit=2)
    assert [row["key"] for row in body["data"]["rows"]] == ["A", "B"]
    assert body["pagination"] == {"limit": 2, "offset": 0, "total": 3, "hasMore": True}
    body = await _margins(client, tenant, "customer", sort="cost", order="desc", limit=1)
    assert [row["key"] for row in body["data"]["rows"]] == ["A"]
    r = await client.get(f"{API}/analytics/customers/nobody", headers=tenant.headers("read"))
    assert r.status_code == 404


async def test_window_and_hourly_series(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    await roll_up(ctx)
    # a window of whole hours cutting days and the month: Jan 3 12:00 - Jan 10 01:00
    body = await _margins(
        client, tenant, "customer", **{"from": "2026-01-03T12:00:00Z", "to": "2026-01-10T01:00:00Z"}
    )
    rows = {row["key"]: row for row in body["data"]["rows"]}
    assert set(rows) == {"A"}
    assert rows["A"]["events"] == 4 and rows["A"]["costMicros"] == 2_102_000
    r = await client.get(
        f"{API}/analytics/timeseries",
        params={
            "interval": "hour",
            "from": "2026-01-03T12:00:00Z",
            "to": "2026-01-04T00:00:00Z",
            "groupBy": "feature",
        },
        headers=tenant.headers("read"),
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data["buckets"]) == 12
    first, last = data["buckets"][0], data["buckets"][-1]
    assert first["revenueMicros"] == 1_500_000 and first["costMicros"] == 600_000
    assert last["start"].startswith("2026-01-03T23:00") and last["costMicros"] == 2_000
    assert {g["key"] for g in last["groups"]} == set(data["keys"])


async def test_bad_input_and_roles(ctx, client, tenant):
    for params, field in (
        ({"from": "2026-01-03T12:30:00Z"}, "from"),
        ({"groupBy": "planet"}, "groupBy"),
        ({"sort": "name"}, "sort"),
        ({"limit": 0}, "limit"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "yesterday"}, "from"),
    ):
        r = await client.get(
            f"{API}/analytics/margins", params=params, headers=tenant.headers("read")
        )
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["field"] == field, (params, r.json())
    r = await client.get(
        f"{API}/analytics/timeseries",
        params={"interval": "hour", "from": "2025-01-01T00:00:00Z"},
        headers=tenant.headers("read"),
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "interval"
    r = await client.get(f"{API}/analytics/margins")
    assert r.status_code == 401
    r = await client.get(f"{API}/settings/costs", headers=tenant.headers("client"))
    assert r.status_code == 403
    r = await client.put(
        f"{API}/settings/costs",
        json={"modelPriceOverrides": [{"model": "x", "provider": "p", "inputPricePerMillion": -1}]},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "modelPriceOverrides[0].inputPricePerMillion"


async def test_views_never_miss_or_double_count_while_events_arrive_and_roll_up(
    ctx, client, tenant
):
    """Ingest, the rollup job and the views run at once: every view counts a number of
    events between those acknowledged before it started and those sent by the time it
    answered, and the cost is exactly 0.01 per event counted."""
    sent = acked = 0
    done = False

    async def ingest() -> None:
        nonlocal sent, acked, done
        for batch in range(12):
            events = [
                {
                    "eventIdempotencyKey": f"c{batch}-{i}",
                    "eventName": "call",
                    "customerReferenceId": f"cus_{i % 7}",
                    "featureKey": "chat",
                    "occurredAt": f"2026-01-{1 + batch:02d}T{i % 24:02d}:15:00Z",
                    "costAmount": "0.01",
                }
                for i in range(50)
            ]
            sent += len(events)
            r = await client.post(
                f"{API}/events/batch", json={"events": events}, headers=tenant.headers("client")
            )
            assert r.status_code == 200, r.text
            acked += len(events)
        done = True

    async def roll() -> None:
        while not done:
            async with ctx.db.unit_of_work() as s:
                await roll_up_chunk(s)
            await anyio.lowlevel.checkpoint()

    async def read() -> None:
        while not done:
            low = acked
            body = await _margins(client, tenant, "customer")
            high = sent
            t = body["data"]["totals"]
            assert low <= t["events"] <= high, (low, t["events"], high)
            assert t["costMicros"] == t["events"] * 10_000

    async with anyio.create_task_group() as tg:
        tg.start_soon(ingest)
        tg.start_soon(roll)
        tg.start_soon(read)
    await roll_up(ctx)
    body = await _margins(client, tenant, "customer")
    assert body["data"]["totals"]["events"] == 600
    assert body["data"]["totals"]["costMicros"] == 6_000_000

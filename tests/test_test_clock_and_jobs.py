"""Test clocks and the job runner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tanso_mcp.services.jobs import DueItem, JobRegistry, run_due

pytestmark = pytest.mark.anyio


async def test_new_test_environment_clock_starts_at_creation(client, tenant, clock):
    r = await client.get("/api/v1/client/test-clock", headers=tenant.headers("read"))
    assert r.json()["data"]["now"] == "2026-01-15T10:00:00Z"


async def test_clock_runs_with_real_time(client, tenant, clock):
    clock.set(clock.now() + timedelta(hours=5))  # real time passes…
    r = await client.get("/api/v1/client/test-clock", headers=tenant.headers("read"))
    # …and so does the test clock
    assert r.json()["data"] == {"now": "2026-01-15T15:00:00Z", "frozen": False, "offsetSeconds": 0}


async def test_real_timestamps_are_accepted_after_the_environment_was_created(
    client, tenant, clock
):
    """An application sends real occurredAt values to its test environment: ten minutes
    after the environment was created they must still be accepted (they used to be
    rejected as 'in the future' because the clock stood still at the creation instant)."""
    clock.set(clock.now() + timedelta(minutes=10))
    body = {
        "eventIdempotencyKey": "real-time-1",
        "eventName": "api_call",
        "customerReferenceId": "cus_rt",
        "featureKey": "api_calls",
        "occurredAt": "2026-01-15T10:10:00Z",
    }
    r = await client.post("/api/v1/client/events", json=body, headers=tenant.headers("client"))
    assert r.status_code == 201, r.text


async def test_time_errors_name_the_environment_clock(client, tenant, clock):
    body = {
        "eventName": "api_call",
        "customerReferenceId": "cus_rt",
        "featureKey": "api_calls",
        "occurredAt": "2026-01-16T10:00:00Z",
    }
    r = await client.post("/api/v1/client/events", json=body, headers=tenant.headers("client"))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["field"] == "occurredAt"
    assert "environment's clock says it is 2026-01-15T10:00:00.000Z" in error["message"]


async def test_frozen_clock_stands_still_until_advanced_or_unfrozen(client, tenant, clock):
    h, url = tenant.headers(), "/api/v1/client/test-clock"
    r = await client.post(url, json={"frozen": True}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"now": "2026-01-15T10:00:00Z", "frozen": True, "offsetSeconds": 0}
    clock.set(clock.now() + timedelta(hours=5))  # real time passes, the frozen clock does not
    r = await client.get(url, headers=tenant.headers("read"))
    assert r.json()["data"] == {
        "now": "2026-01-15T10:00:00Z",
        "frozen": True,
        "offsetSeconds": -18000,
    }
    r = await client.post(f"{url}/advance", json={"days": 1}, headers=h)
    assert r.json()["data"]["now"] == "2026-01-16T10:00:00Z"
    assert r.json()["data"]["frozen"] is True
    r = await client.post(url, json={"frozen": False}, headers=h)
    assert r.json()["data"] == {
        "now": "2026-01-16T10:00:00Z",
        "frozen": False,
        "offsetSeconds": 68400,
    }
    clock.set(clock.now() + timedelta(hours=1))  # runs again from where it stood
    r = await client.get(url, headers=h)
    assert r.json()["data"]["now"] == "2026-01-16T11:00:00Z"


async def test_advanced_clock_keeps_running_ahead(client, tenant, clock):
    h, url = tenant.headers(), "/api/v1/client/test-clock"
    r = await client.post(f"{url}/advance", json={"days": 2}, headers=h)
    assert r.json()["data"]["offsetSeconds"] == 172800
    clock.set(clock.now() + timedelta(hours=1))
    r = await client.get(url, headers=h)
    assert r.json()["data"] == {
        "now": "2026-01-17T11:00:00Z",
        "frozen": False,
        "offsetSeconds": 172800,
    }


async def test_freeze_needs_admin_and_a_boolean(client, tenant):
    url = "/api/v1/client/test-clock"
    r = await client.post(url, json={"frozen": True}, headers=tenant.headers("client"))
    assert r.status_code == 403
    r = await client.post(url, json={"frozen": "yes"}, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["error"]["field"] == "frozen"
    r = await client.post(url, json={"frozen": True}, headers=tenant.headers("admin", "live"))
    assert r.status_code == 400 and r.json()["error"]["field"] == "environment"


async def test_advance_by_days_seconds_and_to(client, tenant):
    h = tenant.headers()
    r = await client.post("/api/v1/client/test-clock/advance", json={"days": 2}, headers=h)
    assert r.status_code == 200 and r.json()["data"]["now"] == "2026-01-17T10:00:00Z"
    r = await client.post("/api/v1/client/test-clock/advance", json={"seconds": 90}, headers=h)
    assert r.json()["data"]["now"] == "2026-01-17T10:01:30Z"
    r = await client.post(
        "/api/v1/client/test-clock/advance", json={"to": "2026-03-01T00:00:00Z"}, headers=h
    )
    assert r.json()["data"]["now"] == "2026-03-01T00:00:00Z"
    r = await client.get("/api/v1/client/test-clock", headers=h)
    assert r.json()["data"]["now"] == "2026-03-01T00:00:00Z"


async def test_clock_never_moves_backwards(client, tenant):
    r = await client.post(
        "/api/v1/client/test-clock/advance",
        json={"to": "2025-01-01T00:00:00Z"},
        headers=tenant.headers(),
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "to"


async def test_live_environment_has_no_test_clock(client, tenant):
    r = await client.post(
        "/api/v1/client/test-clock/advance",
        json={"days": 1},
        headers=tenant.headers("admin", "live"),
    )
    assert r.status_code == 400


async def test_environments_have_separate_clocks(ctx, client, tenant):
    from tests.conftest import make_tenant

    other = await make_tenant(ctx, "other")
    await client.post(
        "/api/v1/client/test-clock/advance", json={"days": 10}, headers=tenant.headers()
    )
    r = await client.get("/api/v1/client/test-clock", headers=other.headers())
    assert r.json()["data"]["now"] == "2026-01-15T10:00:00Z"


class Recorder:
    """A job kind over an in-memory schedule: items are (due_at, key)."""

    def __init__(self, schedule, spawn=None):
        self.schedule = dict(schedule)  # key -> due
        self.done: list[tuple[str, datetime]] = []
        self.spawn = spawn or {}

    async def find_due(self, session, env_id, until, limit):
        return [
            self.registry.item(self.name, at, key)
            for key, at in self.schedule.items()
            if at <= until
        ][:limit]

    async def run(self, session, ctx, env_id, key, now):
        self.done.append((key, now))
        assert await ctx.clocks.now(env_id) == now
        del self.schedule[key]
        if key in self.spawn:  # running an item can make new work due later
            new_key, at = self.spawn[key]
            self.schedule[new_key] = at


def _t(day, hour=0):
    return datetime(2026, 1, day, hour, tzinfo=UTC)


async def test_advance_runs_due_jobs_in_time_order_at_their_due_time(ctx, tenant):
    reg = JobRegistry()
    rec = Recorder(
        {"c": _t(20), "a": _t(16), "b": _t(18), "late": _t(30)}, spawn={"a": ("a2", _t(17))}
    )
    rec.registry, rec.name = reg, "rec"
    reg.register("rec", rec.find_due, rec.run)
    ctx.jobs = reg
    env = tenant.env_ids["test"]
    ran = await run_due(ctx, env, until=_t(25), move_clock=True)
    assert ran == 4
    assert rec.done == [("a", _t(16)), ("a2", _t(17)), ("b", _t(18)), ("c", _t(20))]
    assert await ctx.clocks.now(env) == _t(25)
    assert "late" in rec.schedule


async def test_a_failing_item_does_not_loop_or_block_others(ctx, tenant):
    reg = JobRegistry()
    calls = []

    async def find_due(session, env_id, until, limit):
        return [reg.item("bad", _t(16), "x"), reg.item("bad", _t(17), "y")]

    async def run(session, ctx_, env_id, key, now):
        calls.append(key)
        if key == "x":
            raise RuntimeError("boom")

    reg.register("bad", find_due, run)
    ctx.jobs = reg
    ran = await run_due(ctx, tenant.env_ids["test"], until=_t(20), move_clock=True)
    assert calls == ["x", "y"] and ran == 1


async def test_job_effects_roll_back_when_the_item_fails(ctx, tenant):
    from tanso_mcp.db.models import Feature

    reg = JobRegistry()

    async def find_due(session, env_id, until, limit):
        return [reg.item("w", _t(16), "k")]

    async def run(session, ctx_, env_id, key, now):
        session.add(
            Feature(environment_id=env_id, key="f", name="f", created_at=now, modified_at=now)
        )
        await session.flush()
        raise RuntimeError("after the write")

    reg.register("w", find_due, run)
    ctx.jobs = reg
    await run_due(ctx, tenant.env_ids["test"], until=_t(20), move_clock=True)
    async with ctx.db.reader() as s:
        assert (await s.execute(select(Feature))).first() is None


def test_registry_rejects_duplicates_and_orders_ties():
    reg = JobRegistry()

    async def f(*a):
        return []

    reg.register("one", f, f)
    reg.register("two", f, f)
    with pytest.raises(ValueError):
        reg.register("one", f, f)
    a = reg.item("two", _t(1), "k")
    b = reg.item("one", _t(1), "k")
    assert sorted([a, b]) == [b, a]
    assert isinstance(a, DueItem)


async def test_testing_tool_group_sees_and_moves_the_clock(ctx, tenant, clock):
    from tests.mcp_helpers import fails, inmemory, ok

    async with inmemory(ctx, tenant.keys[("test", "admin")], ("testing",)) as mcp:
        state = await ok(mcp, "getTestClock")
        assert state == {"now": "2026-01-15T10:00:00Z", "frozen": False, "offsetSeconds": 0}
        moved = await ok(mcp, "advanceTestClock", {"days": 1})
        assert moved["now"] == "2026-01-16T10:00:00Z" and moved["jobsRun"] == 0
        frozen = await ok(mcp, "setTestClockFrozen", {"frozen": True})
        assert frozen["frozen"] is True and frozen["offsetSeconds"] == 86400
        clock.set(clock.now() + timedelta(minutes=3))
        assert (await ok(mcp, "getTestClock"))["now"] == "2026-01-16T10:00:00Z"
        bad = await fails(mcp, "advanceTestClock", {"days": 1, "seconds": 5})
        assert bad["error"] == "invalid_request" and bad["field"] == "days"
    async with inmemory(ctx, tenant.keys[("live", "admin")], ("testing",)) as mcp:
        live = await fails(mcp, "getTestClock")
        assert live["error"] == "invalid_request" and live["field"] == "environment"
    async with inmemory(ctx, tenant.keys[("test", "admin")]) as mcp:
        names = {tool.name for tool in (await mcp.list_tools()).tools}
        assert "getTestClock" not in names and len(names) == 34

"""Use cases of a test environment's clock: read it, move it forward, freeze it.

Shared by the REST endpoints (``/api/v1/client/test-clock``) and the optional ``testing``
MCP tool group. A live environment has no test clock: it always runs on real time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from ..errors import InvalidRequest
from ..principal import Principal
from .clocks import micros
from .jobs import run_due
from .outputs import ClockOut

if TYPE_CHECKING:
    from ..bootstrap import AppContext

__all__ = ["MAX_ADVANCE", "advance", "clock_state", "set_frozen"]

MAX_ADVANCE = timedelta(days=3660)


def _require_test(principal: Principal) -> None:
    if principal.mode != "test":
        raise InvalidRequest(
            "test clocks exist only in test environments (use an sk_test_ key); a live "
            "environment always runs on real time",
            field="environment",
        )


def _view(now: datetime, frozen: bool, system_now: datetime) -> ClockOut:
    # offsetSeconds: how far the clock is ahead of real time at this moment
    return ClockOut(
        now=now, frozen=frozen, offsetSeconds=Decimal(micros(now - system_now)) / 1_000_000
    )


async def clock_state(ctx: AppContext, principal: Principal) -> ClockOut:
    _require_test(principal)
    state = await ctx.clocks.state(principal.environment_id, principal.mode)
    system_now = ctx.clocks.system_now()
    return _view(state.now(system_now), state.frozen, system_now)


async def advance(
    ctx: AppContext,
    principal: Principal,
    *,
    days: int | None = None,
    seconds: int | None = None,
    to: datetime | None = None,
) -> ClockOut:
    """Move the clock forward and run every job that became due, in time order, each at
    its own due instant. The clock ends exactly ``delta`` further than before (a running
    clock keeps running, shifted by ``delta``; a frozen one stands at its new instant)."""
    _require_test(principal)
    given = [
        name for name, v in (("days", days), ("seconds", seconds), ("to", to)) if v is not None
    ]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of days, seconds or to", field="days")
    env_id = principal.environment_id
    ctx.clocks.forget(env_id)  # read the stored value, not a cached one
    state = await ctx.clocks.state(env_id, principal.mode)
    start = state.now(ctx.clocks.system_now())
    if to is not None:
        if to < start:
            raise InvalidRequest(
                f"the test clock only moves forward; it reads {start.isoformat()}", field="to"
            )
        delta = to - start
        if delta > MAX_ADVANCE:
            raise InvalidRequest("advance at most 3660 days at a time", field="to")
    elif days is not None:
        delta = timedelta(days=days)
    else:
        delta = timedelta(seconds=seconds or 0)
    ran = await run_due(ctx, env_id, until=start + delta, move_clock=True)
    # A running clock went on running while the jobs ran: it ends at its start plus the
    # advance plus the real time that passed, so its offset is exactly old + delta.
    end = state.frozen_at + delta if state.frozen and state.frozen_at else None
    if end is None:
        system_now = ctx.clocks.system_now()
        end = system_now + timedelta(microseconds=state.offset_us) + delta
    async with ctx.db.unit_of_work() as session:
        await ctx.clocks.set_test_clock(session, env_id, end, frozen=state.frozen)
    ctx.clocks.remember(env_id, end, frozen=state.frozen)
    return (await clock_state(ctx, principal)).model_copy(update={"jobsRun": ran})


async def set_frozen(ctx: AppContext, principal: Principal, frozen: bool) -> ClockOut:
    """Freeze the clock at its current instant, or let it run on from where it stands."""
    _require_test(principal)
    env_id = principal.environment_id
    ctx.clocks.forget(env_id)
    now = await ctx.clocks.now(env_id, principal.mode)
    async with ctx.db.unit_of_work() as session:
        await ctx.clocks.set_test_clock(session, env_id, now, frozen=frozen)
    ctx.clocks.remember(env_id, now, frozen=frozen)
    return await clock_state(ctx, principal)

"""The job runner: time-driven work (renewals, invoice status changes, expiries…).

A job kind is registered with two functions:

- ``find_due(session, environment_id, until, limit) -> list[DueItem]``: the items whose
  due time is <= ``until``, read from the domain tables (so the schedule can never drift
  from the data);
- ``run(session, ctx, environment_id, key, now)``: performs one item inside its own unit
  of work. It must be idempotent and safe when several processes run it at once: it
  re-checks its condition with a conditional UPDATE or relies on a unique constraint.

Advancing a test clock runs every item that became due, in time order: the
environment's clock is set to each item's due time before the item runs, so the work
sees the time at which it was due. Live environments run whatever is due now.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import rowcount
from ..db.models import Environment, JobLease

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger("tanso_mcp.jobs")

HOLDER = f"{socket.gethostname()}:{os.getpid()}"
MAX_ITEMS_PER_RUN = 1_000_000


@dataclass(frozen=True, order=True)
class DueItem:
    at: datetime
    order: int  # registration order of the job kind: ties run in a fixed order
    job: str = field(compare=False)
    key: str


FindDue = Callable[[AsyncSession, str, datetime, int], Awaitable[list[DueItem]]]
RunItem = Callable[[AsyncSession, "AppContext", str, str, datetime], Awaitable[Any]]
# A pass runs after an environment's due items, outside any transaction, so it may call
# the network (e.g. a payment provider): ``run(ctx, environment_id, now) -> items done``.
# It opens its own units of work and must be idempotent like every job.
Pass = Callable[["AppContext", str, datetime], Awaitable[int]]


@dataclass
class JobKind:
    name: str
    find_due: FindDue
    run: RunItem
    order: int = 0


class JobRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.passes: dict[str, Pass] = {}

    def register_pass(self, name: str, run: Pass) -> None:
        if name in self.passes:
            raise ValueError(f"pass {name!r} registered twice")
        self.passes[name] = run

    def register(self, name: str, find_due: FindDue, run: RunItem) -> None:
        if name in self._kinds:
            raise ValueError(f"job {name!r} registered twice")
        self._kinds[name] = JobKind(name, find_due, run, order=len(self._kinds))

    def item(self, name: str, at: datetime, key: str) -> DueItem:
        return DueItem(at=at, order=self._kinds[name].order, job=name, key=key)

    @property
    def names(self) -> list[str]:
        return list(self._kinds)

    def kinds(self) -> list[JobKind]:
        return sorted(self._kinds.values(), key=lambda k: k.order)

    def get(self, name: str) -> JobKind:
        return self._kinds[name]


async def _collect(ctx: AppContext, env_id: str, until: datetime, limit: int) -> list[DueItem]:
    items: list[DueItem] = []
    async with ctx.db.reader() as session:
        for kind in ctx.jobs.kinds():
            found = await kind.find_due(session, env_id, until, limit)
            items.extend(found)
    items.sort()
    return items


async def try_lease(ctx: AppContext, name: str, now: datetime, ttl: timedelta) -> bool:
    """Best-effort cluster lease (see JobLease). Uses the wall clock: leases are about
    processes, not about test-clock time."""
    wall = ctx.clocks.system_now()
    try:
        async with ctx.db.unit_of_work() as s:
            res = await s.execute(
                update(JobLease)
                .where(JobLease.name == name, JobLease.expires_at < wall)
                .values(holder=HOLDER, expires_at=wall + ttl)
            )
            if rowcount(res) == 1:
                return True
            exists = await s.scalar(select(JobLease.name).where(JobLease.name == name))
            if exists is not None:
                return False
            s.add(JobLease(name=name, holder=HOLDER, expires_at=wall + ttl))
        return True
    except IntegrityError:
        return False


async def release_lease(ctx: AppContext, name: str) -> None:
    async with ctx.db.unit_of_work() as s:
        await s.execute(delete(JobLease).where(JobLease.name == name, JobLease.holder == HOLDER))


async def _run_item(ctx: AppContext, env_id: str, item: DueItem, now: datetime) -> bool:
    lease = f"{env_id}:{item.job}:{item.key}"
    if not await try_lease(ctx, lease, now, timedelta(minutes=5)):
        return False
    try:
        kind = ctx.jobs.get(item.job)
        async with ctx.db.unit_of_work() as session:
            await kind.run(session, ctx, env_id, item.key, now)
        return True
    finally:
        await release_lease(ctx, lease)


async def run_due(
    ctx: AppContext, env_id: str, *, until: datetime | None = None, move_clock: bool = False
) -> int:
    """Run every due item of one environment, in time order. With ``move_clock`` (test
    environments), the environment clock steps to each item's due time and finally to
    ``until``. Returns the number of items run."""
    if until is None:
        until = await ctx.clocks.now(env_id)
    done = 0
    seen: set[tuple[str, str, datetime]] = set()
    while done < MAX_ITEMS_PER_RUN:
        items = [
            i for i in await _collect(ctx, env_id, until, 500) if (i.job, i.key, i.at) not in seen
        ]
        if not items:
            break
        first_at = items[0].at
        batch = [i for i in items if i.at == first_at]
        for item in batch:
            now = until
            if move_clock:
                current = await ctx.clocks.now(env_id)
                now = max(first_at, current)
                if now != current:  # items due at the same instant share one clock write
                    async with ctx.db.unit_of_work() as s:
                        await ctx.clocks.set_test_clock(s, env_id, now)
                    ctx.clocks.remember(env_id, now)
            try:
                if await _run_item(ctx, env_id, item, now):
                    done += 1
            except Exception:
                log.exception("job %s %s failed", item.job, item.key)
            # an item that stays due after running (failed, or leased elsewhere) is not
            # retried within this run, so a broken item cannot loop forever
            seen.add((item.job, item.key, item.at))
    if move_clock:
        async with ctx.db.unit_of_work() as s:
            await ctx.clocks.set_test_clock(s, env_id, until)
        ctx.clocks.remember(env_id, until)
    for name, run in ctx.jobs.passes.items():
        try:
            done += await run(ctx, env_id, until)
        except Exception:
            log.exception("job pass %s failed", name)
    return done


async def run_all_due(ctx: AppContext) -> int:
    """One pass over every environment at its own current time (serve loop, `jobs run`)."""
    async with ctx.db.reader() as s:
        envs = (await s.execute(select(Environment.id, Environment.mode))).all()
    total = 0
    for env_id, mode in envs:
        now = await ctx.clocks.now(env_id, mode)
        total += await run_due(ctx, env_id, until=now)
    return total

"""The job runner: time-driven work (renewals, invoice status changes, expiries…).

A job kind is registered with two functions:

- ``find_due(session, environment_id, until, limit) -> list[DueItem]``: the items whose
  due time is <= ``until``, read from the domain tables (so the schedule can never drift
  from the data);
- ``run(session, ctx, environment_id, key, now)``: performs one item inside its own unit
  of work. It must be idempotent and safe when several processes run it at once: it
  re-checks its condition with a conditional UPDATE or relies on a unique constraint.

A kind registered with ``batch=True`` runs the items due at the same instant in batches
(up to :data:`BATCH_SIZE` per unit of work) instead of one transaction and one lease per
item. Its ``claim(session, environment_id, keys) -> keys`` takes the rows the batch will
write with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several processes share
the due set without overlap (SQLite serialises writers: every key is claimed); its
``run_batch(session, ctx, environment_id, keys, now) -> items done`` processes them
set-based, or, without one, each item runs in its own savepoint. When a batch fails, its
items run again one at a time, each in its own savepoint: a failing item is rolled back,
logged and counted (``RunReport.failed``) while the others commit; it stays due, so the
next run retries it. On PostgreSQL the batches of a kind that names each item's
customer (``owners``) are made of whole customers and run several at once
(:func:`_run_batches`).

Advancing a test clock runs every item that became due, in time order: the
environment's clock is set to each item's due time before the item runs, so the work
sees the time at which it was due. Live environments run whatever is due now.
"""

from __future__ import annotations

import asyncio
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
BATCH_SIZE = 500
# batches of one kind and instant running at once on PostgreSQL (see _run_batches); with
# the database on the same two cores, three measured no better than two
BATCH_LANES = 2
# due items looked up at once while one instant holds more than a look returned: each
# look queries every kind's finder, so many items due together (renewals on the 1st)
# cost n / COLLECT_SIZE looks instead of n / BATCH_SIZE; items spread over many
# instants are looked up a batch per lane at a time, since only the first instant runs
# per look
COLLECT_SIZE = 10 * BATCH_SIZE


@dataclass(frozen=True, order=True)
class DueItem:
    at: datetime
    order: int  # registration order of the job kind: ties run in a fixed order
    job: str = field(compare=False)
    key: str


FindDue = Callable[[AsyncSession, str, datetime, int], Awaitable[list[DueItem]]]
RunItem = Callable[[AsyncSession, "AppContext", str, str, datetime], Awaitable[Any]]
Claim = Callable[[AsyncSession, str, list[str]], Awaitable[list[str]]]
# the customer each key belongs to (see _run_batches)
Owners = Callable[[AsyncSession, str, list[str]], Awaitable[dict[str, str]]]
RunBatch = Callable[[AsyncSession, "AppContext", str, list[str], datetime], Awaitable[int]]
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
    batch: bool = False
    claim: Claim | None = None
    run_batch: RunBatch | None = None
    owners: Owners | None = None


class JobRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.passes: dict[str, Pass] = {}

    def register_pass(self, name: str, run: Pass) -> None:
        if name in self.passes:
            raise ValueError(f"pass {name!r} registered twice")
        self.passes[name] = run

    def register(
        self,
        name: str,
        find_due: FindDue,
        run: RunItem,
        *,
        batch: bool = False,
        claim: Claim | None = None,
        run_batch: RunBatch | None = None,
        owners: Owners | None = None,
    ) -> None:
        if name in self._kinds:
            raise ValueError(f"job {name!r} registered twice")
        self._kinds[name] = JobKind(
            name,
            find_due,
            run,
            order=len(self._kinds),
            batch=batch or run_batch is not None,
            claim=claim,
            run_batch=run_batch,
            owners=owners,
        )

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


@dataclass
class RunReport:
    """What a run did: items done, and the items that failed (logged; they stay due and
    the next run retries them)."""

    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _drop_callbacks_after(s: AsyncSession, mark: int) -> None:
    """Forget the after-commit effects a rolled-back savepoint recorded."""
    pending = s.info.get("after_commit")
    if pending is not None:
        del pending[mark:]


async def _run_one_by_one(
    ctx: AppContext, env_id: str, kind: JobKind, keys: list[str], now: datetime, report: RunReport
) -> list[str]:
    """Each item in its own savepoint of one unit of work: a failing item is rolled back
    alone, logged and counted; the others commit. Returns the keys it could not claim."""
    async with ctx.db.unit_of_work() as s:
        claimed = await _claim(s, env_id, kind, keys)
        for key in claimed:
            mark = len(s.info.get("after_commit", []))
            try:
                async with s.begin_nested():
                    await kind.run(s, ctx, env_id, key, now)
                report.done += 1
            except Exception:
                _drop_callbacks_after(s, mark)
                log.exception("job %s %s failed", kind.name, key)
                report.failed.append((kind.name, key))
    return _unclaimed(keys, claimed)


def _unclaimed(keys: list[str], claimed: list[str]) -> list[str]:
    if len(claimed) == len(keys):
        return []
    held = set(claimed)
    return [k for k in keys if k not in held]


async def _claim(s: AsyncSession, env_id: str, kind: JobKind, keys: list[str]) -> list[str]:
    if kind.claim is None:
        return keys
    return await kind.claim(s, env_id, keys)


async def _run_batch(
    ctx: AppContext, env_id: str, kind: JobKind, keys: list[str], now: datetime, report: RunReport
) -> list[str]:
    """One batch in one unit of work. Returns the keys its claim skipped (held by
    another transaction at that moment)."""
    if kind.run_batch is None:
        return await _run_one_by_one_or_report(ctx, env_id, kind, keys, now, report)
    try:
        async with ctx.db.unit_of_work() as s:
            claimed = await _claim(s, env_id, kind, keys)
            count = await kind.run_batch(s, ctx, env_id, claimed, now) if claimed else 0
        report.done += count
        return _unclaimed(keys, claimed)
    except Exception:
        # the whole batch rolled back: find the failing item by running them one by one
        log.warning(
            "job %s: batch of %d failed; running its items one by one",
            kind.name,
            len(keys),
            exc_info=True,
        )
        return await _run_one_by_one_or_report(ctx, env_id, kind, keys, now, report)


async def _run_one_by_one_or_report(
    ctx: AppContext, env_id: str, kind: JobKind, keys: list[str], now: datetime, report: RunReport
) -> list[str]:
    """One by one; if even that unit of work fails (its claim or its commit, e.g. a
    deadlock), all its items stay due and are reported, and the run goes on."""
    mine = RunReport()  # merged once committed (another lane may be adding to report)
    try:
        skipped = await _run_one_by_one(ctx, env_id, kind, keys, now, mine)
    except Exception:
        log.exception("job %s: %d items failed together", kind.name, len(keys))
        report.failed.extend((kind.name, key) for key in keys)
        return []
    report.done += mine.done
    report.failed.extend(mine.failed)
    return skipped


def _lanes(ctx: AppContext) -> int:
    return BATCH_LANES if ctx.db.dialect == "postgresql" else 1


def batches_by_owner(keys: list[str], owner: dict[str, str], size: int) -> list[list[list[str]]]:
    """``keys`` packed into batches of at most ``size`` that keep each customer's keys
    together, grouped into units (a unit is one batch, or the several batches of a
    customer with more than ``size`` keys, to run in order): no customer is in two
    units. A key without an owner is its own."""
    mine: dict[str, list[str]] = {}
    for key in keys:
        mine.setdefault(owner.get(key, key), []).append(key)
    units: list[list[list[str]]] = []
    batch: list[str] = []
    for group in mine.values():
        if len(group) > size:
            units.append([group[at : at + size] for at in range(0, len(group), size)])
            continue
        if len(batch) + len(group) > size:
            units.append([batch])
            batch = []
        batch += group
    if batch:
        units.append([batch])
    return units


async def _run_batches(
    ctx: AppContext, env_id: str, kind: JobKind, keys: list[str], now: datetime, report: RunReport
) -> None:
    """The items of one kind due at one instant, BATCH_SIZE per unit of work.

    On PostgreSQL, for a kind that says whose each item is (``owners``), the batches
    are made of whole customers and run BATCH_LANES at a time on as many connections:
    while one batch's statements run in the database server, the next is worked out
    here, so the run uses this process's core and the server's. Everything a billing
    job locks beyond its claimed rows (credit pools, a new pool's unique key) belongs to
    one customer, so batches running at once never wait for each other, and cannot
    deadlock. A key whose claim found its row held (by another process) runs once more
    after the others. SQLite has one writer: one batch at a time."""
    lanes = _lanes(ctx)
    if lanes == 1 or len(keys) <= BATCH_SIZE or kind.owners is None:
        for at in range(0, len(keys), BATCH_SIZE):
            await _run_batch(ctx, env_id, kind, keys[at : at + BATCH_SIZE], now, report)
        return
    async with ctx.db.reader() as s:
        owner = await kind.owners(s, env_id, keys)
    units = iter(batches_by_owner(keys, owner, BATCH_SIZE))
    skipped: list[str] = []

    async def lane() -> None:
        for unit in units:  # the lanes share the iterator: each unit runs once
            for batch in unit:
                skipped.extend(await _run_batch(ctx, env_id, kind, batch, now, report))

    await asyncio.gather(*(lane() for _ in range(lanes)))
    for at in range(0, len(skipped), BATCH_SIZE):
        await _run_batch(ctx, env_id, kind, skipped[at : at + BATCH_SIZE], now, report)


async def run_due(
    ctx: AppContext, env_id: str, *, until: datetime | None = None, move_clock: bool = False
) -> int:
    """Run every due item of one environment, in time order. With ``move_clock`` (test
    environments), the environment clock steps to each item's due time and finally to
    ``until``. Returns the number of items run (:func:`run_due_report` tells failures)."""
    return (await run_due_report(ctx, env_id, until=until, move_clock=move_clock)).done


async def run_due_report(
    ctx: AppContext, env_id: str, *, until: datetime | None = None, move_clock: bool = False
) -> RunReport:
    if until is None:
        until = await ctx.clocks.now(env_id)
    report = RunReport()
    seen: set[tuple[str, str, datetime]] = set()
    extra = 0  # items seen before that are still due (failed, or claimed elsewhere)
    size = first_size = BATCH_SIZE * _lanes(ctx)  # a look fills every lane
    while report.done < MAX_ITEMS_PER_RUN:
        limit = size + extra
        found = await _collect(ctx, env_id, until, limit)
        items = [i for i in found if (i.job, i.key, i.at) not in seen]
        extra = len(found) - len(items)  # the next look goes past them
        if not items:
            if len(found) >= limit:  # a kind's answer was cut short by them: look further
                extra += size
                continue
            break
        first_at = items[0].at
        # a look filled by one instant: that instant likely goes on, look further next
        size = COLLECT_SIZE if len(found) >= limit and items[-1].at == first_at else first_size
        now = until
        if move_clock:
            current = await ctx.clocks.now(env_id)
            now = max(first_at, current)
            if now != current:  # items due at the same instant share one clock write
                async with ctx.db.unit_of_work() as s:
                    await ctx.clocks.set_test_clock(s, env_id, now)
                ctx.clocks.remember(env_id, now)
        batch = [i for i in items if i.at == first_at]
        # consecutive items of one batched kind run together; the others one by one
        groups: list[list[DueItem]] = []
        for item in batch:
            if groups and groups[-1][0].job == item.job and ctx.jobs.get(item.job).batch:
                groups[-1].append(item)
            else:
                groups.append([item])
        for group in groups:
            kind = ctx.jobs.get(group[0].job)
            if kind.batch:
                await _run_batches(ctx, env_id, kind, [i.key for i in group], now, report)
            else:
                item = group[0]
                try:
                    if await _run_item(ctx, env_id, item, now):
                        report.done += 1
                except Exception:
                    log.exception("job %s %s failed", item.job, item.key)
                    report.failed.append((item.job, item.key))
            # an item that stays due after running (failed, or claimed elsewhere) is not
            # retried within this run, so a broken item cannot loop forever
            seen.update((i.job, i.key, i.at) for i in group)
    if move_clock:
        async with ctx.db.unit_of_work() as s:
            await ctx.clocks.set_test_clock(s, env_id, until)
        ctx.clocks.remember(env_id, until)
    for name, run in ctx.jobs.passes.items():
        try:
            report.done += await run(ctx, env_id, until)
        except Exception:
            log.exception("job pass %s failed", name)
    return report


async def run_all_due(ctx: AppContext) -> int:
    """One pass over every environment at its own current time (serve loop, `jobs run`)."""
    async with ctx.db.reader() as s:
        envs = (await s.execute(select(Environment.id, Environment.mode))).all()
    total = 0
    for env_id, mode in envs:
        now = await ctx.clocks.now(env_id, mode)
        total += await run_due(ctx, env_id, until=now)
    return total

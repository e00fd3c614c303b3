"""In-process cache behind the entitlement checks: a warm check reads no database.

What is cached, per environment:

- customers by reference: the customer's subscriptions that grant features, with the
  features each one grants and their parsed rules (loaded by
  :func:`.grants.load_granting`, decided by :mod:`tanso_mcp.domain.entitlements`), and
  the customer's credit pools (with their subscription links) — or "no such customer";
- features by key (or "no such feature"), to tell "unknown feature" from "not granted";
- usage counters by (subscription, feature, window start).

Freshness rules — a check never serves a stale decision after a write in this process:

1. **Other writes** (catalog, customers, subscriptions, entitlements, credit grants…)
   record ``AppContext.changed`` on their unit of work, which bumps the environment's
   generation after the commit; an
   environment whose generation moved is dropped whole. A loader remembers the
   generation it started under and stores nothing if it moved meanwhile.
2. **Metering writes** go through the writer, which publishes the committed values it
   computed under lock (counters, pool balances) *before* answering the request; a
   loader that raced with such a commit (per-counter and per-customer epochs) does not
   store what it read.
3. **Other processes** (several servers on one PostgreSQL database, or a CLI on the
   same SQLite file) are seen within ``entitlement_cache_seconds`` plus one refresh:
   an expired entry is refreshed in the background while it keeps answering (for at most
   one more such period), so a popular entry never makes every request wait for the
   database. A check is a read: the authoritative limit and credit decisions are taken
   again, under lock, when the usage is ingested.

Concurrent misses of one entry share a single database load (single flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ...db.models import (
    CreditGrant,
    CreditModel,
    CreditPool,
    CreditPoolSubscription,
    Customer,
    Feature,
    UsageCounter,
)
from .batch import Effects
from .grants import SubInfo, load_granting
from .sqlio import AlchemyTx

if TYPE_CHECKING:
    from ...context import AppContext

log = logging.getLogger("tanso_mcp.metering")

CounterKey = tuple[str, str, datetime]


@dataclass(slots=True)
class PoolInfo:
    id: str
    denomination: str
    balance_q: int
    total_granted_q: int
    total_consumed_q: int
    hard_limit: bool
    status: str
    links: dict[str, tuple[int | None, int]]  # sub id -> (draw limit_q, drawn_q)
    # live grants: id -> (remaining_q, expires_at); a grant past its expiry no longer
    # counts even before the expiry job runs (ingest expires it before drawing)
    grants: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)

    def live_q(self, now: datetime) -> int:
        return sum(r for r, exp in self.grants.values() if exp is None or exp > now)


@dataclass(slots=True)
class CustomerInfo:
    id: str
    reference_id: str
    subs: list[SubInfo]
    pools: dict[str, PoolInfo]  # by denomination
    model_hard: dict[str, bool]  # denomination -> credit model hard limit (no pool yet)


@dataclass(slots=True)
class FeatureInfo:
    id: str
    key: str
    enabled: bool


@dataclass
class EnvCache:
    generation: int
    customers: dict[str, tuple[CustomerInfo | None, float]] = field(default_factory=dict)
    features: dict[str, tuple[FeatureInfo | None, float]] = field(default_factory=dict)
    counters: dict[CounterKey, tuple[int, int, float]] = field(default_factory=dict)
    pools_by_id: dict[str, PoolInfo] = field(default_factory=dict)
    refs_by_customer: dict[str, str] = field(default_factory=dict)


class MeteringCache:
    MAX_ENTRIES = 200_000

    def __init__(self, ctx: AppContext, ttl_seconds: float):
        self.ctx = ctx
        self.ttl = ttl_seconds
        self.envs: dict[str, EnvCache] = {}
        # bumped by every metering commit that changed the value (never reset)
        self.counter_epoch: dict[CounterKey, int] = {}
        self.customer_epoch: dict[str, int] = {}
        self.loads = 0  # database loads, for tests
        self._inflight: dict[Any, asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ envs

    def env(self, env_id: str) -> EnvCache:
        gen = self.ctx.generation(env_id)
        cache = self.envs.get(env_id)
        if cache is None or cache.generation != gen:
            cache = EnvCache(gen)
            self.envs[env_id] = cache
        return cache

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.ttl

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: either way done
                pass

    def _usable(self, stamp: float) -> bool:
        """Expired, but young enough to answer with while a refresh runs in the
        background (expiry only bounds how late other processes' writes are seen;
        this process's writes have already reached the entry or dropped it)."""
        return time.monotonic() - stamp < 2 * self.ttl

    def _refresh(self, flight: Any, load: Any, valid: Any) -> None:
        if flight in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self._once(flight, load, valid))
        self._background.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background cache refresh failed: %r", task.exception())

    # ------------------------------------------------------------------ reads

    async def _once(self, flight: Any, load: Any, valid: Any) -> Any:
        """Single flight: concurrent misses of one entry share one database load (no
        stampede when a popular entry expires). A caller that joined someone else's load
        re-checks the result with ``valid`` (a metering commit or another write may have
        landed while it was loading) and otherwise loads on its own."""
        fut = self._inflight.get(flight)
        if fut is not None:
            result = await asyncio.shield(fut)
            if valid(result):
                return result
            return await load()
        fut = asyncio.get_running_loop().create_future()
        self._inflight[flight] = fut
        try:
            result = await load()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: joiners re-raise it themselves
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            if self._inflight.get(flight) is fut:
                del self._inflight[flight]

    async def customer(self, env_id: str, ref: str) -> CustomerInfo | None:
        cache = self.env(env_id)
        hit = cache.customers.get(ref)
        if hit is not None and self._fresh(hit[1]):
            return hit[0]
        gen = cache.generation

        async def load() -> tuple[CustomerInfo | None, int, int]:
            started = self.ctx.generation(env_id)
            info, epoch = await self._load_customer(env_id, ref)
            cache = self.env(env_id)
            if (
                cache.generation == started
                and (info is None or self.customer_epoch.get(info.id, 0) == epoch)
                and self.ttl > 0
            ):
                self._trim(cache.customers)
                cache.customers[ref] = (info, time.monotonic())
                if info is not None:
                    cache.refs_by_customer[info.id] = ref
                    for pool in info.pools.values():
                        cache.pools_by_id[pool.id] = pool
            return info, epoch, started

        def valid(result: tuple[CustomerInfo | None, int, int]) -> bool:
            info, epoch, started = result
            return self.ctx.generation(env_id) == started and (
                info is None or self.customer_epoch.get(info.id, 0) == epoch
            )

        flight = ("c", env_id, ref, gen)
        if hit is not None and self._usable(hit[1]):
            self._refresh(flight, load, valid)
            return hit[0]
        info, _, _ = await self._once(flight, load, valid)
        return info

    async def feature(self, env_id: str, key: str) -> FeatureInfo | None:
        cache = self.env(env_id)
        hit = cache.features.get(key)
        if hit is not None and self._fresh(hit[1]):
            return hit[0]

        async def load() -> tuple[FeatureInfo | None, int]:
            started = self.ctx.generation(env_id)
            self.loads += 1
            async with self.ctx.db.reader() as s:
                row = (
                    await s.execute(
                        select(Feature.id, Feature.key, Feature.is_enabled).where(
                            Feature.environment_id == env_id, Feature.key == key
                        )
                    )
                ).first()
            info = None if row is None else FeatureInfo(row[0], row[1], bool(row[2]))
            cache = self.env(env_id)
            if cache.generation == started and self.ttl > 0:
                self._trim(cache.features)
                cache.features[key] = (info, time.monotonic())
            return info, started

        def valid(result: tuple[FeatureInfo | None, int]) -> bool:
            return self.ctx.generation(env_id) == result[1]

        flight = ("f", env_id, key)
        if hit is not None and self._usable(hit[1]):
            self._refresh(flight, load, valid)
            return hit[0]
        info, _ = await self._once(flight, load, valid)
        return info

    async def counter(self, env_id: str, key: CounterKey) -> tuple[int, int]:
        cache = self.env(env_id)
        hit = cache.counters.get(key)
        if hit is not None and self._fresh(hit[2]):
            return hit[0], hit[1]

        async def load() -> tuple[tuple[int, int], int]:
            epoch = self.counter_epoch.get(key, 0)
            self.loads += 1
            async with self.ctx.db.reader() as s:
                row = (
                    await s.execute(
                        select(UsageCounter.used_q, UsageCounter.overage_q).where(
                            UsageCounter.subscription_id == key[0],
                            UsageCounter.feature_id == key[1],
                            UsageCounter.window_start == key[2],
                        )
                    )
                ).first()
            value = (0, 0) if row is None else (int(row[0]), int(row[1]))
            if self.counter_epoch.get(key, 0) == epoch and self.ttl > 0:
                cache = self.env(env_id)
                self._trim(cache.counters)
                cache.counters[key] = (value[0], value[1], time.monotonic())
            return value, epoch

        def valid(result: tuple[tuple[int, int], int]) -> bool:
            return self.counter_epoch.get(key, 0) == result[1]

        flight = ("n", env_id, key)
        if hit is not None and self._usable(hit[2]):
            self._refresh(flight, load, valid)
            return hit[0], hit[1]
        value, _ = await self._once(flight, load, valid)
        return value

    def _trim(self, d: dict) -> None:
        if len(d) >= self.MAX_ENTRIES:
            d.clear()

    # ------------------------------------------------------------------ writer

    def apply(self, effects: Effects, generations: dict[str, int]) -> None:
        """Take over the values a metering transaction committed (called on the event
        loop after the commit, before the requests are answered). ``generations``: each
        environment's generation when the batch started.

        The writer commits up to two batches at once, and their answers may come back in
        either order; what a counter or pool holds only ever grows by usage (counters
        are only added to, a pool's consumption likewise), so values smaller than those
        already cached come from the earlier commit and are not taken."""
        now = time.monotonic()
        for env_id, counters in effects.counters.items():
            cache = self.envs.get(env_id)
            for key, (used, over) in counters.items():
                self.counter_epoch[key] = self.counter_epoch.get(key, 0) + 1
                if cache is not None:
                    held = cache.counters.get(key)
                    if held is None or used >= held[0]:
                        cache.counters[key] = (used, over, now)
        for customer_id in effects.pool_customers:
            self.customer_epoch[customer_id] = self.customer_epoch.get(customer_id, 0) + 1
        for env_id, pools in effects.pools.items():
            cache = self.envs.get(env_id)
            if cache is None:
                continue
            if self.ctx.generation(env_id) != generations.get(env_id):
                # another write committed meanwhile: what is cached may predate this
                # batch's deductions; forget those customers rather than guess
                for values in pools.values():
                    ref = cache.refs_by_customer.get(values["customer_id"])
                    if ref is not None:
                        cache.customers.pop(ref, None)
                continue
            for pool_id, values in pools.items():
                pool = cache.pools_by_id.get(pool_id)
                if pool is not None and values["total_consumed_q"] >= pool.total_consumed_q:
                    pool.balance_q = values["balance_q"]
                    pool.total_consumed_q = values["total_consumed_q"]
                    for sub_id, drawn in values.get("drawn", {}).items():
                        link = pool.links.get(sub_id)
                        if link is not None:
                            pool.links[sub_id] = (link[0], drawn)
                    for gid, remaining in values.get("grants", {}).items():
                        grant = pool.grants.get(gid)
                        if grant is None:
                            continue
                        if remaining > 0:
                            pool.grants[gid] = (remaining, grant[1])
                        else:
                            del pool.grants[gid]

    def forget(self, env_id: str, ids) -> None:
        """Another process committed usage for these customers / subscriptions: drop
        their cached entries and counters (epochs bumped so an in-flight load of the old
        values is not stored)."""
        cache = self.envs.get(env_id)
        if cache is None:
            return
        ids = set(ids)
        for cid in ids:
            self.customer_epoch[cid] = self.customer_epoch.get(cid, 0) + 1
            ref = cache.refs_by_customer.get(cid)
            if ref is not None:
                cache.customers.pop(ref, None)
        for key in [k for k in cache.counters if k[0] in ids]:
            cache.counters.pop(key, None)
            self.counter_epoch[key] = self.counter_epoch.get(key, 0) + 1

    # ------------------------------------------------------------------ loading

    async def _load_customer(self, env_id: str, ref: str) -> tuple[CustomerInfo | None, int]:
        self.loads += 1
        async with self.ctx.db.reader() as s:
            cid = await s.scalar(
                select(Customer.id).where(
                    Customer.environment_id == env_id, Customer.reference_id == ref
                )
            )
            if cid is None:
                return None, 0
            epoch = self.customer_epoch.get(cid, 0)
            granting = await s.run_sync(
                lambda sync: load_granting(AlchemyTx(sync.connection()), env_id, [cid])
            )
            subs = granting.get(cid, [])
            pools: dict[str, PoolInfo] = {}
            for p in (
                await s.execute(select(CreditPool).where(CreditPool.customer_id == cid))
            ).scalars():
                pools[p.denomination] = PoolInfo(
                    p.id,
                    p.denomination,
                    p.balance_q,
                    p.total_granted_q,
                    p.total_consumed_q,
                    p.hard_limit,
                    p.status,
                    {},
                )
            if pools:
                by_id = {p.id: p for p in pools.values()}
                for link in (
                    await s.execute(
                        select(CreditPoolSubscription).where(
                            CreditPoolSubscription.pool_id.in_(list(by_id))
                        )
                    )
                ).scalars():
                    by_id[link.pool_id].links[link.subscription_id] = (
                        link.draw_limit_q,
                        link.total_drawn_q,
                    )
                for gid, pid, remaining, expires in (
                    await s.execute(
                        select(
                            CreditGrant.id,
                            CreditGrant.pool_id,
                            CreditGrant.remaining_q,
                            CreditGrant.expires_at,
                        ).where(
                            CreditGrant.pool_id.in_(list(by_id)),
                            CreditGrant.remaining_q > 0,
                            CreditGrant.voided_at.is_(None),
                        )
                    )
                ).all():
                    by_id[pid].grants[gid] = (int(remaining), expires)
            denoms = {
                g.rule.credits.denomination
                for sub in subs
                for g in sub.grants.values()
                if g.rule is not None and g.rule.credits is not None
            } - set(pools)
            model_hard: dict[str, bool] = {}
            if denoms:
                for denom, hard in (
                    await s.execute(
                        select(CreditModel.denomination, CreditModel.hard_limit).where(
                            CreditModel.environment_id == env_id,
                            CreditModel.denomination.in_(sorted(denoms)),
                        )
                    )
                ).all():
                    model_hard[denom] = bool(hard)
        return CustomerInfo(cid, ref, subs, pools, model_hard), epoch

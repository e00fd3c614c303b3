"""Composition root: builds the application context once per process (or per test)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import Clock, SystemClock
from .db.changefeed import Change, ChangeFeed
from .db.engine import Database
from .db.migrate import upgrade
from .db.types import new_id
from .plugin import DomainEvent, Plugins, build_plugins
from .principal import Principal
from .services.auth import KeyResolver
from .services.clocks import EnvironmentClocks
from .services.jobs import JobRegistry
from .settings import Settings


@dataclass
class AppContext:
    settings: Settings
    db: Database
    clocks: EnvironmentClocks
    keys: KeyResolver
    jobs: JobRegistry
    # filled by later layers (plugin manager, payment providers, hot-path caches…)
    extras: dict[str, Any] = field(default_factory=dict)
    # per-environment generation counters: bumped after any committed change to the
    # catalog, subscriptions, entitlements or credit pools, so in-process caches of
    # decisions (entitlement checks) never serve a stale answer after a write made in
    # this process
    generations: dict[str, int] = field(default_factory=dict)
    # awaited (last registered first) by close(): background writers, threads…
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(fn)

    # PostgreSQL only: announces this process's committed changes to the other processes
    # sharing the database and applies theirs (see db/changefeed.py)
    feed: ChangeFeed | None = None

    def invalidate(self, environment_id: str) -> None:
        self._bump(environment_id)
        if self.feed is not None:
            self.feed.publish("env", environment_id)

    def _bump(self, environment_id: str) -> None:
        self.generations[environment_id] = self.generations.get(environment_id, 0) + 1

    def apply_change(self, change: Change) -> None:
        """Another process committed ``change``: drop what this process cached of it."""
        from .services.payments import forget_provider

        metering = self.extras.get("metering")
        if change.kind == "env" and change.environment_id:
            self._bump(change.environment_id)
            self.clocks.forget(change.environment_id)
            forget_provider(self, change.environment_id)
        elif change.kind == "usage" and change.environment_id:
            if metering is not None:
                metering.cache.forget(change.environment_id, change.ids)
        elif change.kind == "keys":
            self.keys.invalidate()
        elif change.kind == "resync":
            envs = set(self.generations)
            if metering is not None:
                envs.update(metering.cache.envs)
            for env in envs:
                self._bump(env)
            self.clocks.forget()
            self.keys.invalidate()
            self.extras.pop("providers", None)

    async def start_feed(self) -> None:
        """Listen for the other processes' changes (PostgreSQL; no-op on SQLite)."""
        if self.db.dialect != "postgresql" or self.feed is not None:
            return
        self.feed = ChangeFeed(self.db.url, self.apply_change)
        self.feed.start()
        self.on_close(self._stop_feed)
        try:  # normally up in a few ms; never hold start-up for it
            await asyncio.wait_for(self.feed.connected.wait(), timeout=5)
        except TimeoutError:
            pass

    async def _stop_feed(self) -> None:
        if self.feed is not None:
            feed, self.feed = self.feed, None
            await feed.close()

    def generation(self, environment_id: str) -> int:
        return self.generations.get(environment_id, 0)

    async def now(self, principal: Principal) -> datetime:
        return await self.clocks.now(principal.environment_id, principal.mode)

    @property
    def plugins(self) -> Plugins:
        return self.extras["plugins"]

    async def emit(self, name: str, principal: Principal, payload: dict[str, Any]) -> None:
        """Announce a committed domain event to plugins (call it after the commit; the
        `tanso_domain_event` hook). A failing plugin never fails the caller."""
        hook = self.extras.get("emit")
        if hook is not None:
            await hook(name, principal, payload)
            return
        plugins: Plugins | None = self.extras.get("plugins")
        if plugins is None:
            return
        event = DomainEvent(
            name=name,
            environment_id=principal.environment_id,
            account_id=principal.account_id,
            mode=principal.mode,
            occurred_at=await self.now(principal),
            payload=payload,
            id=new_id(),
        )
        await plugins.emit(event, self)

    async def migrate(self) -> None:
        await upgrade(self.db.engine)

    async def close(self) -> None:
        while self.closers:
            await self.closers.pop()()
        await self.db.dispose()


def register_jobs(registry: JobRegistry) -> None:
    """Every job kind of the product registers here (billing, credits, …)."""
    from .services import analytics_alerts, analytics_rollup, billing_jobs

    billing_jobs.register(registry)
    analytics_rollup.register(registry)
    analytics_alerts.register(registry)


def build_context(
    settings: Settings, clock: Clock | None = None, plugins: Plugins | None = None
) -> AppContext:
    """``plugins``: a prepared plugin manager (tests inject fakes this way); by default
    the built-ins plus whatever the ``tanso_mcp`` entry-point group provides."""
    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    clocks = EnvironmentClocks(db, clock or SystemClock(), ttl_seconds=settings.key_cache_seconds)
    jobs = JobRegistry()
    register_jobs(jobs)
    ctx = AppContext(
        settings=settings,
        db=db,
        clocks=clocks,
        keys=KeyResolver(db, settings.key_cache_seconds),
        jobs=jobs,
    )
    ctx.extras["plugins"] = plugins if plugins is not None else build_plugins()
    return ctx

"""Composition root: builds the application context once per process (or per test)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import Clock, SystemClock
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

    def invalidate(self, environment_id: str) -> None:
        self.generations[environment_id] = self.generations.get(environment_id, 0) + 1

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
    from .services import billing_jobs, stripe_import, stripe_jobs, stripe_usage

    billing_jobs.register(registry)
    stripe_jobs.register(registry)
    stripe_usage.register(registry)
    stripe_import.register(registry)


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

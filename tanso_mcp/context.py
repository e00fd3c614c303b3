"""The application context every use case receives: settings, database, environment
clocks, key resolver, job registry, plugins and the process's long-lived helpers (the
metering engine, payment providers), as typed attributes.

It imports no service: services depend on it, never the reverse (the parts that are
services — clocks, keys, jobs — are described here by the protocols the rest of the
code uses). ``bootstrap.build_context`` assembles it once per process (or per test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from .clock import Clock
from .db.changefeed import Change, ChangeFeed
from .db.engine import Database, after_commit
from .db.migrate import upgrade
from .db.types import new_id
from .plugin import DomainEvent, PaymentProvider, Plugins
from .principal import Principal
from .settings import Settings


class Clocks(Protocol):
    """Each environment's clock (a test environment's test clock, else the system's)."""

    system: Clock

    def system_now(self) -> datetime: ...
    async def now(self, environment_id: str, mode: str | None = None) -> datetime: ...
    async def state(self, environment_id: str, mode: str | None = None) -> Any: ...
    async def set_test_clock(
        self,
        session: AsyncSession,
        environment_id: str,
        at: datetime,
        *,
        frozen: bool | None = None,
    ) -> Any: ...
    def remember(
        self, environment_id: str, at: datetime, *, frozen: bool | None = None
    ) -> None: ...
    def forget(self, environment_id: str | None = None) -> None: ...


class Keys(Protocol):
    """API key → principal, cached."""

    ttl: float

    async def resolve(self, key: str) -> Principal | None: ...
    def invalidate(self, key_hash: str | None = None) -> None: ...


class Jobs(Protocol):
    """The registry of job kinds (what runs when an environment's clock passes)."""

    def register(self, name: str, find_due: Any, run: Any) -> None: ...

    # passes: run after an environment's due items, outside any transaction
    passes: dict[str, Any]

    def register_pass(self, name: str, run: Any) -> None: ...
    def item(self, name: str, at: datetime, key: str) -> Any: ...
    @property
    def names(self) -> list[str]: ...
    def kinds(self) -> list[Any]: ...
    def get(self, name: str) -> Any: ...


class Closeable(Protocol):
    async def close(self) -> None: ...


EmitHook = Callable[[str, Principal, dict[str, Any]], Awaitable[None]]


@dataclass
class AppContext:
    settings: Settings
    db: Database
    clocks: Clocks
    keys: Keys
    jobs: Jobs
    plugins: Plugins
    # replaces plugin delivery of domain events (tests observe events this way)
    emit_hook: EmitHook | None = None
    # the process's metering engine (group-commit writer + entitlement cache), created
    # on first use by services.metering
    metering: Closeable | None = None
    # payment providers built for (environment id, provider name, credentials version)
    providers: dict[tuple[str, ...], PaymentProvider] = field(default_factory=dict)
    # state owned by plugins (a plugin keeps its own singletons here, by its own name)
    extras: dict[str, Any] = field(default_factory=dict)
    # per-environment generation counters: bumped after any committed change to the
    # catalog, customers, subscriptions, entitlements or credit pools, so in-process
    # caches of decisions (entitlement checks) never serve a stale answer after a write
    # made in this process
    generations: dict[str, int] = field(default_factory=dict)
    # awaited (last registered first) by close(): background writers, threads…
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(fn)

    # PostgreSQL only: announces this process's committed changes to the other processes
    # sharing the database and applies theirs (db/changefeed.py)
    feed: ChangeFeed | None = None

    def invalidate(self, environment_id: str) -> None:
        """Bump the environment's generation now (and tell the other processes). Writers
        do not call this by hand: they record the change on their unit of work with
        :meth:`changed`."""
        self._bump(environment_id)
        if self.feed is not None:
            self.feed.publish("env", environment_id)

    def _bump(self, environment_id: str) -> None:
        self.generations[environment_id] = self.generations.get(environment_id, 0) + 1

    def apply_change(self, change: Change) -> None:
        """Another process committed ``change``: drop what this process cached of it."""
        cache = getattr(self.metering, "cache", None)
        if change.kind == "env" and change.environment_id:
            self._bump(change.environment_id)
            self.clocks.forget(change.environment_id)
            for key in [k for k in self.providers if k[0] == change.environment_id]:
                self.providers.pop(key, None)
        elif change.kind == "usage" and change.environment_id:
            if cache is not None:
                cache.forget(change.environment_id, change.ids)
        elif change.kind == "keys":
            self.keys.invalidate()
        elif change.kind == "resync":
            envs = set(self.generations)
            if cache is not None:
                envs.update(cache.envs)
            for env in envs:
                self._bump(env)
            self.clocks.forget()
            self.keys.invalidate()
            self.providers.clear()

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

    def changed(self, session: AsyncSession, environment_id: str) -> None:
        """Record on ``session``'s unit of work that the environment's catalog,
        customers, subscriptions, entitlements or credits changed: its caches are
        invalidated once the unit of work commits (never on rollback)."""
        pending: set[str] | None = session.info.get("invalidate")
        if pending is None:
            pending = session.info["invalidate"] = set()

            async def run() -> None:
                for env in sorted(pending):
                    self.invalidate(env)

            after_commit(session, run)
        pending.add(environment_id)

    def announce(
        self, session: AsyncSession, name: str, principal: Principal, payload: dict[str, Any]
    ) -> None:
        """Record a domain event on ``session``'s unit of work: emitted to plugins after
        its commit (after the cache invalidations recorded before it), dropped on
        rollback."""

        async def run() -> None:
            await self.emit(name, principal, payload)

        after_commit(session, run)

    async def now(self, principal: Principal) -> datetime:
        return await self.clocks.now(principal.environment_id, principal.mode)

    async def emit(self, name: str, principal: Principal, payload: dict[str, Any]) -> None:
        """Announce a committed domain event to plugins now (the `tanso_domain_event`
        hook); writers record events with :meth:`announce` instead. A failing plugin
        never fails the caller."""
        if self.emit_hook is not None:
            await self.emit_hook(name, principal, payload)
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
        await self.plugins.emit(event, self)

    async def migrate(self) -> None:
        await upgrade(self.db.engine)

    async def close(self) -> None:
        while self.closers:
            await self.closers.pop()()
        await self.db.dispose()

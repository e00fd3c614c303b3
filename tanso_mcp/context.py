"""The application context every use case receives: settings, database, environment
clocks, key resolver, job registry, plugins and the process's long-lived helpers (the
metering engine, payment providers), as typed attributes.

It imports no service: services depend on it, never the reverse (the parts that are
services — clocks, keys, jobs — are described here by the protocols the rest of the
code uses). ``bootstrap.build_context`` assembles it once per process (or per test).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from .clock import Clock
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
    async def set_test_clock(
        self, session: AsyncSession, environment_id: str, at: datetime
    ) -> Any: ...
    def remember(self, environment_id: str, at: datetime) -> None: ...
    def forget(self, environment_id: str | None = None) -> None: ...


class Keys(Protocol):
    """API key → principal, cached."""

    ttl: float

    async def resolve(self, key: str) -> Principal | None: ...
    def invalidate(self, key_hash: str | None = None) -> None: ...


class Jobs(Protocol):
    """The registry of job kinds (what runs when an environment's clock passes)."""

    def register(self, name: str, find_due: Any, run: Any) -> None: ...
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
    # payment providers built for (environment id, provider name)
    providers: dict[tuple[str, str], PaymentProvider] = field(default_factory=dict)
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

    def invalidate(self, environment_id: str) -> None:
        """Bump the environment's generation now. Writers do not call this by hand:
        they record the change on their unit of work with :meth:`changed`."""
        self.generations[environment_id] = self.generations.get(environment_id, 0) + 1

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

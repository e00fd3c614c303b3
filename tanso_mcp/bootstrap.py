"""Composition root: builds the application context (:mod:`tanso_mcp.context`) once per
process (or per test). ``AppContext`` is re-exported here for existing imports."""

from __future__ import annotations

from .clock import Clock, SystemClock
from .context import AppContext
from .db.engine import Database
from .plugin import Plugins, build_plugins
from .services.auth import KeyResolver
from .services.clocks import EnvironmentClocks
from .services.jobs import JobRegistry
from .settings import Settings

__all__ = ["AppContext", "build_context", "register_jobs"]


def register_jobs(registry: JobRegistry) -> None:
    """Every job kind of the product registers here (billing, credits, …)."""
    from .services import (
        analytics_alerts,
        analytics_rollup,
        billing_jobs,
        stripe_import,
        stripe_jobs,
        stripe_usage,
    )

    billing_jobs.register(registry)
    analytics_rollup.register(registry)
    analytics_alerts.register(registry)
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
        plugins=plugins if plugins is not None else build_plugins(),
    )
    # the plugins' outbox (public plugin API: tanso_mcp.plugin.outbox_of)
    from .services.outbox import DatabaseOutbox

    ctx.extras["outbox"] = DatabaseOutbox(db, clocks)
    return ctx

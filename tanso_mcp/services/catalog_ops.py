"""Catalog use cases (features, plans, plan-feature rules) as whole units of work: each
opens one, calls the session-level functions of :mod:`.catalog`, records the cache
invalidation on it (run after the commit) and returns the view. The MCP tools call
these; a REST transport would call the same ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..principal import Principal
from . import catalog, views

if TYPE_CHECKING:
    from ..context import AppContext


async def _write(
    ctx: AppContext, p: Principal, fn: Callable[[AsyncSession, Any], Awaitable[Any]]
) -> Any:
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        out = await fn(s, now)
        ctx.changed(s, p.environment_id)
    return out


async def create_feature(ctx: AppContext, p: Principal, **fields: Any) -> dict[str, Any]:
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        f = await catalog.create_feature(s, p.environment_id, now, **fields)
        return views.feature_view(f)

    return await _write(ctx, p, fn)


async def update_feature(
    ctx: AppContext, p: Principal, feature_id: str, **changes: Any
) -> dict[str, Any]:
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        f = await catalog.update_feature(s, p.environment_id, now, feature_id, **changes)
        return views.feature_view(f)

    return await _write(ctx, p, fn)


async def create_plan(ctx: AppContext, p: Principal, **fields: Any) -> dict[str, Any]:
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        plan = await catalog.create_plan(s, p.environment_id, now, **fields)
        (out,) = await views.plans_with_features(s, [plan], admin=True)
        return out

    return await _write(ctx, p, fn)


async def update_plan(
    ctx: AppContext, p: Principal, plan_id: str, **changes: Any
) -> dict[str, Any]:
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        plan = await catalog.update_plan(s, p.environment_id, now, plan_id, **changes)
        (out,) = await views.plans_with_features(s, [plan], admin=True)
        return out

    return await _write(ctx, p, fn)


async def link_feature(ctx: AppContext, p: Principal, **rule: Any) -> dict[str, Any]:
    """Link a feature to a plan with its rule; the rule's view."""
    return await _write_rule(catalog.link_feature, ctx, p, rule)


async def update_rule(ctx: AppContext, p: Principal, **rule: Any) -> dict[str, Any]:
    return await _write_rule(catalog.update_rule, ctx, p, rule)


async def _write_rule(service: Any, ctx: AppContext, p: Principal, rule: dict[str, Any]):
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        pf = await service(s, p.environment_id, now, **rule)
        f = await catalog.feature_by_id(s, p.environment_id, rule["feature_id"])
        return views.rule_view(pf, f)

    return await _write(ctx, p, fn)


async def unlink_feature(
    ctx: AppContext, p: Principal, plan_id: str, feature_id: str
) -> dict[str, Any]:
    async def fn(s: AsyncSession, now: Any) -> dict[str, Any]:
        pf = await catalog.unlink_feature(s, p.environment_id, plan_id, feature_id)
        return {"success": True, "message": "feature unlinked from plan", "ruleId": pf.id}

    return await _write(ctx, p, fn)

"""The environment's cost configuration (admin): default cost config and model price
overrides, and the model prices in force. New events are costed with what is stored
here; events already stored keep their cost."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..context import AppContext
from ..db.models import Environment
from ..domain.analytics_costs import (
    overrides_to_json,
    parse_overrides,
    prices_in_force,
    stored_config,
)
from ..domain.rules import parse_default_cost_config
from ..errors import InvalidRequest, NotFound
from ..principal import Principal
from .outputs_analytics import CostsOut, ModelPriceOut

_UNSET = object()


async def _env(s: AsyncSession, env: str, lock: bool = False) -> Environment:
    stmt = select(Environment).where(Environment.id == env)
    if lock and s.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    row = await s.scalar(stmt)
    if row is None:
        raise NotFound("environment not found")
    return row


def _view(settings: dict[str, Any]) -> CostsOut:
    config, overrides = stored_config(settings)
    return CostsOut.model_validate(
        {
            "defaultCostConfig": config.to_json() if config is not None else None,
            "modelPriceOverrides": overrides_to_json(overrides),
        }
    )


async def get_costs(ctx: AppContext, p: Principal) -> CostsOut:
    async with ctx.db.reader() as s:
        return _view(dict((await _env(s, p.environment_id)).settings or {}))


async def put_costs(
    s: AsyncSession,
    env: str,
    now: datetime,
    *,
    default_cost_config: Any = _UNSET,
    model_price_overrides: Any = _UNSET,
) -> CostsOut:
    """Replace the given parts (an omitted part stays; ``null`` clears it)."""
    if default_cost_config is _UNSET and model_price_overrides is _UNSET:
        raise InvalidRequest(
            "give defaultCostConfig and/or modelPriceOverrides", field="defaultCostConfig"
        )
    row = await _env(s, env, lock=True)
    settings = dict(row.settings or {})
    if default_cost_config is not _UNSET:
        config = parse_default_cost_config(default_cost_config, "defaultCostConfig")
        if config is None:
            settings.pop("defaultCostConfig", None)
        else:
            settings["defaultCostConfig"] = config.to_json()
    if model_price_overrides is not _UNSET:
        overrides = parse_overrides(model_price_overrides, now.date())
        if overrides:
            settings["modelPriceOverrides"] = overrides_to_json(overrides)
        else:
            settings.pop("modelPriceOverrides", None)
    row.settings = settings
    await s.flush()
    return _view(settings)


async def model_prices(ctx: AppContext, p: Principal) -> list[ModelPriceOut]:
    """Every model's price in force now on the environment's clock."""
    now = await ctx.now(p)
    async with ctx.db.reader() as s:
        settings = dict((await _env(s, p.environment_id)).settings or {})
    _, overrides = stored_config(settings)
    return [ModelPriceOut.model_validate(row) for row in prices_in_force(overrides, now)]


async def put_settings(ctx: AppContext, p: Principal, given: Mapping[str, Any]) -> CostsOut:
    """:func:`update_costs` from the fields given (``defaultCostConfig``,
    ``modelPriceOverrides``): an omitted one stays as it is."""
    parts = {
        part: given[name]
        for name, part in (
            ("defaultCostConfig", "default_cost_config"),
            ("modelPriceOverrides", "model_price_overrides"),
        )
        if name in given
    }
    return await update_costs(ctx, p, **parts)


async def update_costs(ctx: AppContext, p: Principal, **parts: Any) -> CostsOut:
    """The use case both transports call: one unit of work; the environment's caches
    (which price events with these settings) are invalidated after its commit."""
    now = await ctx.now(p)
    async with ctx.db.unit_of_work() as s:
        view = await put_costs(s, p.environment_id, now, **parts)
        ctx.changed(s, p.environment_id)
    return view

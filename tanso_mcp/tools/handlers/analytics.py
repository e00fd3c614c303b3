"""The optional ``analytics`` tool group: the same use cases as the analytics endpoints."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ...bootstrap import AppContext
from ...domain.periods import parse_datetime
from ...principal import Principal
from ...services import analytics as svc
from ...services import analytics_alerts as alerts
from ...services import analytics_costs as costs


def _window(params: Any) -> tuple[Any, Any]:
    start = parse_datetime(params.from_, "from") if params.from_ else None
    end = parse_datetime(params.to, "to") if params.to else None
    return start, end


async def get_margin_summary(app: AppContext, p: Principal, params: Any):
    start, end = _window(params)
    now = await app.now(p)
    async with app.db.reader() as s:
        data, total = await svc.margins(
            s,
            p.environment_id,
            now,
            group_by=params.groupBy or "customer",
            start=start,
            end=end,
            sort=params.sort or "grossMargin",
            order=params.order or "asc",
            limit=params.limit,
            offset=params.offset,
        )
    data["pagination"] = {
        "limit": params.limit,
        "offset": params.offset,
        "total": total,
        "hasMore": params.offset + len(data["rows"]) < total,
    }
    return data


async def get_customer_margin(app: AppContext, p: Principal, params: Any):
    start, end = _window(params)
    now = await app.now(p)
    async with app.db.reader() as s:
        return await svc.customer_margin(
            s, p.environment_id, now, params.customerReferenceId, start=start, end=end
        )


async def get_margin_timeseries(app: AppContext, p: Principal, params: Any):
    start, end = _window(params)
    now = await app.now(p)
    async with app.db.reader() as s:
        return await svc.timeseries(
            s,
            p.environment_id,
            now,
            interval=params.interval or "day",
            group_by=params.groupBy,
            start=start,
            end=end,
            limit=params.limit,
        )


async def get_cost_settings(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        return await costs.get_costs(s, p.environment_id)


def _json(text: str, field: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def update_cost_settings(app: AppContext, p: Principal, params: Any):
    kwargs: dict[str, Any] = {}
    if params.defaultCostConfigJson is not None:
        kwargs["default_cost_config"] = _json(params.defaultCostConfigJson, "defaultCostConfigJson")
    if params.modelPriceOverridesJson is not None:
        kwargs["model_price_overrides"] = _json(
            params.modelPriceOverridesJson, "modelPriceOverridesJson"
        )
    return await costs.update_costs(app, p, **kwargs)


async def list_model_prices(app: AppContext, p: Principal, params: Any):
    now = await app.now(p)
    async with app.db.reader() as s:
        return await costs.model_prices(s, p.environment_id, now)


async def get_margin_alert_settings(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        return await alerts.get_settings(s, p.environment_id)


async def update_margin_alert_settings(app: AppContext, p: Principal, params: Any):
    raw = _json(params.settingsJson, "settingsJson")
    async with app.db.unit_of_work() as s:
        return await alerts.put_settings(s, p.environment_id, raw)


async def list_margin_alerts(app: AppContext, p: Principal, params: Any):
    async with app.db.reader() as s:
        items, _total = await alerts.list_alerts(s, p.environment_id, params.limit, params.offset)
    return items

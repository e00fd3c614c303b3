"""The optional ``analytics`` tool group: the same use cases as the analytics endpoints."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import analytics as svc
from ...services import analytics_alerts as alerts
from ...services import analytics_costs as costs


async def get_margin_summary(app: AppContext, p: Principal, params: Any):
    return await svc.margin_summary(
        app,
        p,
        from_=params.from_,
        to=params.to,
        group_by=params.groupBy or "customer",
        sort=params.sort or "grossMargin",
        order=params.order or "asc",
        limit=params.limit,
        offset=params.offset,
    )


async def get_customer_margin(app: AppContext, p: Principal, params: Any):
    return await svc.customer_summary(
        app, p, params.customerReferenceId, from_=params.from_, to=params.to
    )


async def get_margin_timeseries(app: AppContext, p: Principal, params: Any):
    return await svc.timeseries_summary(
        app,
        p,
        from_=params.from_,
        to=params.to,
        interval=params.interval or "day",
        group_by=params.groupBy,
        limit=params.limit,
    )


async def get_cost_settings(app: AppContext, p: Principal, params: Any):
    return await costs.get_costs(app, p)


def _json(text: str) -> Any:
    # the parameters are JsonText: already checked to be JSON
    return json.loads(text, parse_float=Decimal)


async def update_cost_settings(app: AppContext, p: Principal, params: Any):
    given = {
        name: _json(text)
        for name, text in (
            ("defaultCostConfig", params.defaultCostConfigJson),
            ("modelPriceOverrides", params.modelPriceOverridesJson),
        )
        if text is not None
    }
    return await costs.put_settings(app, p, given)


async def list_model_prices(app: AppContext, p: Principal, params: Any):
    return await costs.model_prices(app, p)


async def get_margin_alert_settings(app: AppContext, p: Principal, params: Any):
    return await alerts.get_settings(app, p)


async def update_margin_alert_settings(app: AppContext, p: Principal, params: Any):
    return await alerts.put_settings(app, p, _json(params.settingsJson))


async def list_margin_alerts(app: AppContext, p: Principal, params: Any):
    items, _total = await alerts.list_alerts(app, p, params.limit, params.offset)
    return items

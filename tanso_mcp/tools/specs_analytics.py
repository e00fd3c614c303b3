"""The optional ``analytics`` tool group: margins, cost configuration, margin alerts.

Off by default; enabled with ``mcp_tool_groups = ["analytics"]`` (env
``TANSO_MCP_TOOL_GROUPS='["analytics"]'``). The tools answer what the
``/api/v1/client/analytics/…`` and ``/settings/costs`` endpoints answer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tanso_mcp.tools.fields import JsonText, RequiredText, Text
from tanso_mcp.tools.specs import ToolParams, ToolSpec, _ann, _object

__all__ = ["TOOL_SPECS"]

_CAP = "margin analytics"
_READ = _ann(read_only=True, idempotent=True)
_WINDOW_FROM = (
    "Start of the window, ISO 8601 on a whole hour (UTC), e.g. `2026-01-01T00:00:00Z`; "
    "default: the start of the current month on the environment's clock"
)
_WINDOW_TO = "End of the window (exclusive), on a whole hour; default: the end of the month"
_ROW = {
    "type": "object",
    "description": "key, events, usageUnits, revenue, cost, grossMargin, status "
    "(healthy | at_risk | underwater; absent with neither revenue nor cost), revenueMicros, "
    "costMicros, eventsWithoutCost, unknownModelEvents",
    "additionalProperties": True,
}
_ROWS = {"type": "array", "items": _ROW}


class WindowParams(ToolParams):
    from_: Annotated[Text | None, Field(alias="from", description=_WINDOW_FROM)] = None
    to: Annotated[Text | None, Field(description=_WINDOW_TO)] = None


class MarginSummaryParams(WindowParams):
    groupBy: Annotated[
        Text | None, Field(description="customer (default), feature, model or plan")
    ] = None
    sort: Annotated[Text | None, Field(description="grossMargin (default), revenue or cost")] = None
    order: Annotated[Text | None, Field(description="asc (default: worst first) or desc")] = None
    limit: Annotated[int, Field(ge=1, le=500, description="Rows per page (default 20)")] = 20
    offset: Annotated[int, Field(ge=0, le=2**31 - 1, description="Rows to skip")] = 0


class CustomerMarginParams(WindowParams):
    customerReferenceId: Annotated[
        RequiredText, Field(description="The customer's ID in your own system")
    ]


class TimeseriesParams(WindowParams):
    interval: Annotated[Text | None, Field(description="hour, day (default), week or month")] = None
    groupBy: Annotated[
        Text | None,
        Field(description="Also split each bucket by customer, feature, model or plan"),
    ] = None
    limit: Annotated[
        int, Field(ge=1, le=50, description="With groupBy: how many keys (default 10)")
    ] = 10


class NoParams(ToolParams):
    pass


class UpdateCostsParams(ToolParams):
    defaultCostConfigJson: Annotated[
        JsonText | None,
        Field(
            description='JSON object, e.g. {"default_cost_per_unit": 0.000002, '
            '"default_output_cost_per_unit": 0.000008, "model_costs": {"my-model": '
            '{"input": 0.000001, "output": 0.000004}}}; "null" clears it; omit to keep it'
        ),
    ] = None
    modelPriceOverridesJson: Annotated[
        JsonText | None,
        Field(
            description='JSON list replacing the overrides, e.g. [{"provider": "openai", '
            '"model": "gpt-4o", "inputPricePerMillion": 2.0, "outputPricePerMillion": 8.0, '
            '"effectiveFrom": "2026-01-01"}]; "[]" clears them; omit to keep them'
        ),
    ] = None


class AlertSettingsParams(ToolParams):
    settingsJson: Annotated[
        JsonText,
        Field(
            description='JSON object: {"threshold": 0.4, "windowDays": 30, '
            '"customers": {"cus_1": 0.6}, "enabled": true}; "customers" holds per-customer '
            "thresholds"
        ),
    ]


class ListAlertsParams(ToolParams):
    limit: Annotated[int, Field(ge=1, le=500, description="Alerts per page (default 50)")] = 50
    offset: Annotated[int, Field(ge=0, le=2**31 - 1, description="Alerts to skip")] = 0


_SUMMARY = _object(
    "Margin rows of one page (worst first by default) and totals over every row.",
    rows=_ROWS,
    totals=_ROW,
    groupBy={"type": "string"},
    currency={"type": "string"},
    pagination={"type": "object", "additionalProperties": True},
)
_CUSTOMER = _object(
    "One customer's totals, margin by feature and by model, MRR and effective MRR.",
    customerReferenceId={"type": "string"},
    byFeature=_ROWS,
    byModel=_ROWS,
    mrr={"type": "number"},
    effectiveMrr={"type": "number"},
)
_SERIES = _object(
    "Revenue, cost and margin per bucket, with totals.",
    interval={"type": "string"},
    buckets={"type": "array", "items": _ROW},
    totals=_ROW,
)
_COSTS = _object(
    "The environment's cost configuration.",
    defaultCostConfig={"type": "object", "additionalProperties": True},
    modelPriceOverrides={"type": "array", "items": {"type": "object"}},
)
_PRICES = {
    "type": "object",
    "description": 'Model prices in force now. Wrapped as {"items": [...]}.',
    "properties": {"items": {"type": "array", "items": {"type": "object"}}},
    # nothing required at the top level: the same schema must admit the error answers
    "additionalProperties": True,
}
_ALERT_SETTINGS = _object(
    "Margin alert settings.",
    threshold={"type": "number"},
    windowDays={"type": "integer"},
    customers={"type": "object", "additionalProperties": True},
    enabled={"type": "boolean"},
)
_ALERTS = {
    "type": "object",
    "description": 'Margin alerts, newest first. Wrapped as {"items": [...]}.',
    "properties": {"items": {"type": "array", "items": {"type": "object"}}},
    # nothing required at the top level: the same schema must admit the error answers
    "additionalProperties": True,
}


def _spec(name, title, description, params, role, handler, schema, annotations=_READ):
    return ToolSpec(
        name=name,
        title=title,
        description=description,
        params=params,
        role=role,
        annotations=annotations,
        confirm=False,
        handler=handler,
        capability=_CAP,
        output_schema=schema,
        group="analytics",
    )


TOOL_SPECS: tuple[ToolSpec, ...] = (
    _spec(
        "getMarginSummary",
        "Margins: summary by customer, feature, model or plan",
        "Revenue, cost and gross margin ((revenue - cost) / revenue) of the usage events in "
        "a window, grouped by customer, feature, model or plan, with status healthy (>= 0.70), "
        "at_risk (>= 0.40) or underwater. Sorted worst margin first by default, so 'the 20 "
        "worst customers' is one call. Sums are exact (micro-units).",
        MarginSummaryParams,
        "read",
        "get_margin_summary",
        _SUMMARY,
    ),
    _spec(
        "getCustomerMargin",
        "Margins: one customer",
        "One customer's revenue, cost and margin in a window, by feature and by model, with "
        "its MRR (monthly list price of its active subscriptions) and effective MRR (MRR plus "
        "the usage revenue of the current periods).",
        CustomerMarginParams,
        "read",
        "get_customer_margin",
        _CUSTOMER,
    ),
    _spec(
        "getMarginTimeseries",
        "Margins: time series",
        "Revenue, cost and margin per hour, day, week or month (UTC) for charts, optionally "
        "split by the top customers, features, models or plans (by cost).",
        TimeseriesParams,
        "read",
        "get_margin_timeseries",
        _SERIES,
    ),
    _spec(
        "getCostSettings",
        "Costs: get the cost configuration",
        "The environment's default cost configuration (used for events with no explicit "
        "cost and no cost model on their plan rule) and its model price overrides.",
        NoParams,
        "admin",
        "get_cost_settings",
        _COSTS,
    ),
    _spec(
        "updateCostSettings",
        "Costs: set the cost configuration",
        "Replaces the default cost configuration and/or the list of model price overrides "
        "(per million input/output tokens, from an effective date). New events are costed "
        "with them; stored events keep their cost.",
        UpdateCostsParams,
        "admin",
        "update_cost_settings",
        _COSTS,
        _ann(destructive=True, idempotent=True),
    ),
    _spec(
        "listModelPrices",
        "Costs: model prices in force",
        "Every model of the built-in price table and of the overrides with the price in "
        "force now and its source (builtin or override).",
        NoParams,
        "read",
        "list_model_prices",
        _PRICES,
    ),
    _spec(
        "getMarginAlertSettings",
        "Alerts: get margin alert settings",
        "The environment's margin alert threshold, rolling window and per-customer thresholds.",
        NoParams,
        "read",
        "get_margin_alert_settings",
        _ALERT_SETTINGS,
    ),
    _spec(
        "updateMarginAlertSettings",
        "Alerts: set margin alert settings",
        "Sets the margin threshold, the rolling window in days and per-customer thresholds. "
        "A job evaluates each customer's margin over the window: one margin.alert when it "
        "falls below its threshold, one margin.recovered when it is back at or above it, "
        "delivered as signed webhooks by the tanso-webhooks plugin.",
        AlertSettingsParams,
        "admin",
        "update_margin_alert_settings",
        _ALERT_SETTINGS,
        _ann(destructive=True, idempotent=True),
    ),
    _spec(
        "listMarginAlerts",
        "Alerts: list margin alerts",
        "Margin alerts and recoveries that fired, newest first.",
        ListAlertsParams,
        "read",
        "list_margin_alerts",
        _ALERTS,
    ),
)

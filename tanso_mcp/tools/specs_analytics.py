"""The optional ``analytics`` tool group: margins, cost configuration, margin alerts.

Off by default; enabled with ``mcp_tool_groups = ["analytics"]`` (env
``TANSO_MCP_TOOL_GROUPS='["analytics"]'``). The tools answer what the
``/api/v1/client/analytics/…`` and ``/settings/costs`` endpoints answer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tanso_mcp.services.outputs_analytics import (
    AlertOut,
    AlertSettingsOut,
    CostsOut,
    CustomerMarginOut,
    MarginsPageOut,
    ModelPriceOut,
    TimeseriesOut,
)
from tanso_mcp.tools.fields import JsonText, RequiredText, Text
from tanso_mcp.tools.specs import ToolParams, ToolSpec, _ann, group_tools

__all__ = ["TOOL_SPECS"]

_WINDOW_FROM = (
    "Start of the window, ISO 8601 on a whole hour (UTC), e.g. `2026-01-01T00:00:00Z`; "
    "default: the start of the current month on the environment's clock"
)
_WINDOW_TO = "End of the window (exclusive), on a whole hour; default: the end of the month"


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


_tool = group_tools("analytics", "margin analytics")
_WRITE = _ann(destructive=True, idempotent=True)

TOOL_SPECS: tuple[ToolSpec, ...] = (
    _tool(
        "getMarginSummary",
        "Margins: summary by customer, feature, model or plan",
        "Revenue, cost and gross margin ((revenue - cost) / revenue) of the usage events in "
        "a window, grouped by customer, feature, model or plan, with status healthy (>= 0.70), "
        "at_risk (>= 0.40) or underwater. Sorted worst margin first by default, so 'the 20 "
        "worst customers' is one call. Sums are exact (micro-units); unknownModelEvents "
        "counts events whose model no price applied to.",
        MarginSummaryParams,
        role="read",
        handler="get_margin_summary",
        answer=MarginsPageOut,
    ),
    _tool(
        "getCustomerMargin",
        "Margins: one customer",
        "One customer's revenue, cost and margin in a window, by feature and by model, with "
        "its MRR (monthly list price of its active subscriptions) and effective MRR (MRR plus "
        "the usage revenue of the current periods).",
        CustomerMarginParams,
        role="read",
        handler="get_customer_margin",
        answer=CustomerMarginOut,
    ),
    _tool(
        "getMarginTimeseries",
        "Margins: time series",
        "Revenue, cost and margin per hour, day, week or month (UTC) for charts, optionally "
        "split by the top customers, features, models or plans (by cost).",
        TimeseriesParams,
        role="read",
        handler="get_margin_timeseries",
        answer=TimeseriesOut,
    ),
    _tool(
        "getCostSettings",
        "Costs: get the cost configuration",
        "The environment's default cost configuration (used for events with no explicit "
        "cost and no cost model on their plan rule) and its model price overrides.",
        NoParams,
        role="admin",
        handler="get_cost_settings",
        answer=CostsOut,
    ),
    _tool(
        "updateCostSettings",
        "Costs: set the cost configuration",
        "Replaces the default cost configuration and/or the list of model price overrides "
        "(per million input/output tokens, from an effective date). New events are costed "
        "with them; stored events keep their cost.",
        UpdateCostsParams,
        role="admin",
        handler="update_cost_settings",
        answer=CostsOut,
        annotations=_WRITE,
    ),
    _tool(
        "listModelPrices",
        "Costs: model prices in force",
        "Every model of the built-in price table and of the overrides with the price in "
        "force now and its source (builtin or override).",
        NoParams,
        role="read",
        handler="list_model_prices",
        answer=ModelPriceOut,
        items="Model prices in force now.",
    ),
    _tool(
        "getMarginAlertSettings",
        "Alerts: get margin alert settings",
        "The environment's margin alert threshold, rolling window and per-customer thresholds.",
        NoParams,
        role="read",
        handler="get_margin_alert_settings",
        answer=AlertSettingsOut,
    ),
    _tool(
        "updateMarginAlertSettings",
        "Alerts: set margin alert settings",
        "Sets the margin threshold, the rolling window in days and per-customer thresholds. "
        "A job evaluates each customer's margin over the window: one margin.alert when it "
        "falls below its threshold, one margin.recovered when it is back at or above it, "
        "delivered as signed webhooks by the tanso-webhooks plugin.",
        AlertSettingsParams,
        role="admin",
        handler="update_margin_alert_settings",
        answer=AlertSettingsOut,
        annotations=_WRITE,
    ),
    _tool(
        "listMarginAlerts",
        "Alerts: list margin alerts",
        "Margin alerts and recoveries that fired, newest first.",
        ListAlertsParams,
        role="read",
        handler="list_margin_alerts",
        answer=AlertOut,
        items="Margin alerts, newest first.",
    ),
)

"""Margin analytics (read role and up) and the environment's cost configuration (admin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator

from ...principal import Role
from ...services import analytics as svc
from ...services import analytics_alerts as alerts
from ...services import analytics_costs as costs
from ...services.outputs import Out
from ...services.outputs_analytics import (
    AlertOut,
    AlertSettingsOut,
    CostsOut,
    CustomerMarginOut,
    MarginsOut,
    ModelPriceOut,
    TimeseriesOut,
)
from ..routing import MAX_OFFSET, Api, ApiModel, Call, Page, Pagination, QueryModel, envelope_ok

api = Api("/api/v1/client")
TAGS = ["analytics"]


# --------------------------------------------------------------------------- models


class WindowQuery(QueryModel):
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None


class _Paged(WindowQuery):
    groupBy: str | None = None
    limit: int = 50
    offset: int = 0
    sort: Literal["grossMargin", "revenue", "cost"] = "grossMargin"
    order: Literal["asc", "desc"] = "asc"

    def view_args(self) -> dict[str, Any]:
        """The query as the view's keyword arguments."""
        return {
            "from_": self.from_,
            "to": self.to,
            "group_by": self.groupBy,
            "sort": self.sort,
            "order": self.order,
            "limit": self.limit,
            "offset": self.offset,
        }

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int) -> int:
        if not 1 <= v <= 500:
            raise ValueError("limit must be between 1 and 500")
        return v

    @field_validator("offset")
    @classmethod
    def _offset(cls, v: int) -> int:
        if not 0 <= v <= MAX_OFFSET:
            raise ValueError(f"offset must be between 0 and {MAX_OFFSET}")
        return v


class MarginsQuery(_Paged):
    groupBy: Literal["customer", "feature", "model", "plan"] = "customer"


class CustomerQuery(WindowQuery):
    pass


class TimeseriesQuery(_Paged):
    interval: Literal["hour", "day", "week", "month"] = "day"
    groupBy: Literal["customer", "feature", "model", "plan"] | None = None
    limit: int = 10
    sort: Literal["grossMargin", "revenue", "cost"] = "cost"
    order: Literal["asc", "desc"] = "desc"


# --------------------------------------------------------------------------- views


@api.route(
    "GET",
    "/analytics/margins",
    role="read",
    query=MarginsQuery,
    response=MarginsOut,
    paginated="object",
    summary="Revenue, cost and gross margin grouped by customer, feature, model or plan",
    tags=TAGS,
)
async def get_margins(call: Call):
    q: MarginsQuery = call.query
    page = await svc.margin_summary(call.ctx, call.principal, **q.view_args())
    # REST carries the page in the envelope
    data = page.model_dump(by_alias=True, exclude={"pagination"})
    return envelope_ok(data, 200, page.pagination.model_dump())


@api.route(
    "GET",
    "/analytics/customers/{ref}",
    role="read",
    query=CustomerQuery,
    response=CustomerMarginOut,
    summary="One customer's margin by feature and by model, with MRR and effective MRR",
    tags=TAGS,
    errors=(404,),
)
async def get_customer_margin(call: Call):
    q: CustomerQuery = call.query
    return await svc.customer_summary(
        call.ctx, call.principal, call.path["ref"], from_=q.from_, to=q.to
    )


@api.route(
    "GET",
    "/analytics/timeseries",
    role="read",
    query=TimeseriesQuery,
    response=TimeseriesOut,
    summary="Revenue, cost and margin per hour, day, week or month",
    tags=TAGS,
)
async def get_timeseries(call: Call):
    q: TimeseriesQuery = call.query
    return await svc.timeseries_summary(
        call.ctx, call.principal, interval=q.interval, **q.view_args()
    )


# --------------------------------------------------------------------------- cost configuration


class CostsBody(ApiModel):
    defaultCostConfig: dict[str, Any] | None = Field(
        default=None,
        description="model_aware defaults: default_cost_per_unit, "
        "default_output_cost_per_unit, model_costs {model: {input, output}}, cost_unit; "
        "null clears it",
    )
    modelPriceOverrides: list[dict[str, Any]] | None = Field(
        default=None,
        description="[{provider, model, inputPricePerMillion, outputPricePerMillion, "
        "effectiveFrom (YYYY-MM-DD, default today)}]; replaces the whole list",
    )


def _setting(
    path: str,
    name: str,
    *,
    read_role: Role,
    body: type[ApiModel],
    response: type[Out],
    summaries: tuple[str, str],
    get: Callable[[Any, Any], Awaitable[Out]],
    put: Callable[[Any, Any, dict[str, Any]], Awaitable[Out]],
) -> None:
    """``GET`` (``read_role`` and up) and admin ``PUT`` of one environment setting over its
    two use cases; ``PUT`` hands over the fields the body gave."""

    async def read(call: Call):
        return await get(call.ctx, call.principal)

    async def write(call: Call):
        return await put(call.ctx, call.principal, call.body.model_dump(exclude_unset=True))

    # operationIds in /openapi.json
    read.__name__, write.__name__ = f"get_{name}", f"put_{name}"
    api.route("GET", path, role=read_role, response=response, summary=summaries[0], tags=TAGS)(read)
    api.route(
        "PUT", path, role="admin", body=body, response=response, summary=summaries[1], tags=TAGS
    )(write)


_setting(
    "/settings/costs",
    "costs",
    read_role="admin",
    body=CostsBody,
    response=CostsOut,
    summaries=(
        "The environment's default cost configuration and model price overrides",
        "Set the default cost configuration and/or the model price overrides",
    ),
    get=costs.get_costs,
    put=costs.put_settings,
)


@api.route(
    "GET",
    "/analytics/model-prices",
    role="read",
    response=ModelPriceOut,
    paginated=True,
    summary="Model prices in force now: the built-in table and the environment's overrides",
    tags=TAGS,
)
async def get_model_prices(call: Call):
    rows = await costs.model_prices(call.ctx, call.principal)
    return Page(rows, len(rows), len(rows), 0)


# --------------------------------------------------------------------------- margin alerts


class AlertSettingsBody(ApiModel):
    threshold: Decimal | None = Field(
        default=None, description="margin below which a customer is alerted (default 0.40)"
    )
    windowDays: int | None = Field(default=None, description="rolling window (default 30)")
    customers: dict[str, Decimal] | None = Field(
        default=None, description="per-customer thresholds by customer reference"
    )
    enabled: bool | None = None


_setting(
    "/analytics/alerts/settings",
    "alert_settings",
    read_role="read",
    body=AlertSettingsBody,
    response=AlertSettingsOut,
    summaries=(
        "Margin alert threshold, rolling window and per-customer thresholds",
        "Set the margin alert threshold, window and per-customer thresholds",
    ),
    get=alerts.get_settings,
    put=alerts.put_settings,
)


@api.route(
    "GET",
    "/analytics/alerts",
    role="read",
    query=Pagination,
    response=AlertOut,
    paginated=True,
    summary="Margin alerts and recoveries that fired, newest first",
    tags=TAGS,
)
async def get_alerts(call: Call):
    q: Pagination = call.query
    items, total = await alerts.list_alerts(call.ctx, call.principal, q.limit, q.offset)
    return Page(items, total, q.limit, q.offset)

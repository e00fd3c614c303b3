"""Margin analytics (read role and up) and the environment's cost configuration (admin)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator

from ...domain.periods import parse_datetime
from ...services import analytics as svc
from ...services import analytics_alerts as alerts
from ...services import analytics_costs as costs
from ...services.outputs import Amount
from ..routing import MAX_OFFSET, Api, ApiModel, Call, Page, Pagination, QueryModel, envelope_ok
from .schemas import Out

api = Api("/api/v1/client")
TAGS = ["analytics"]


# --------------------------------------------------------------------------- models


class WindowQuery(QueryModel):
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        start = parse_datetime(self.from_, "from") if self.from_ is not None else None
        end = parse_datetime(self.to, "to") if self.to is not None else None
        return start, end


class _Paged(WindowQuery):
    limit: int = 50
    offset: int = 0
    sort: Literal["grossMargin", "revenue", "cost"] = "grossMargin"
    order: Literal["asc", "desc"] = "asc"

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


class MarginRowOut(Out):
    key: str
    events: int
    usageUnits: Amount
    revenue: Amount
    cost: Amount
    grossMargin: Amount | None = None
    status: Literal["healthy", "at_risk", "underwater"] | None = None
    revenueMicros: int
    costMicros: int
    eventsWithoutCost: int
    unknownModelEvents: int


class TotalsOut(Out):
    events: int
    usageUnits: Amount
    revenue: Amount
    cost: Amount
    grossMargin: Amount | None = None
    status: str | None = None
    revenueMicros: int
    costMicros: int
    eventsWithoutCost: int
    unknownModelEvents: int


class MarginsOut(Out):
    from_: datetime = Field(alias="from")
    to: datetime
    groupBy: str
    currency: str
    rows: list[MarginRowOut]
    totals: TotalsOut


class CustomerMarginOut(TotalsOut):
    from_: datetime = Field(alias="from")
    to: datetime
    customerReferenceId: str
    currency: str
    byFeature: list[MarginRowOut]
    byModel: list[MarginRowOut]
    mrr: Amount
    effectiveMrr: Amount
    subscriptions: list[dict[str, Any]]


class PointOut(TotalsOut):
    start: datetime
    end: datetime
    groups: list[MarginRowOut] | None = None


class TimeseriesOut(Out):
    from_: datetime = Field(alias="from")
    to: datetime
    interval: str
    groupBy: str | None = None
    currency: str
    keys: list[str] | None = None
    buckets: list[PointOut]
    totals: TotalsOut


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
    start, end = q.bounds()
    now = await call.ctx.now(call.principal)
    async with call.ctx.db.reader() as s:
        data, total = await svc.margins(
            s,
            call.principal.environment_id,
            now,
            group_by=q.groupBy,
            start=start,
            end=end,
            sort=q.sort,
            order=q.order,
            limit=q.limit,
            offset=q.offset,
        )
    pagination = {
        "limit": q.limit,
        "offset": q.offset,
        "total": total,
        "hasMore": q.offset + len(data["rows"]) < total,
    }
    return envelope_ok(data, 200, pagination)


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
    start, end = call.query.bounds()
    now = await call.ctx.now(call.principal)
    async with call.ctx.db.reader() as s:
        return await svc.customer_margin(
            s, call.principal.environment_id, now, call.path["ref"], start=start, end=end
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
    start, end = q.bounds()
    now = await call.ctx.now(call.principal)
    async with call.ctx.db.reader() as s:
        return await svc.timeseries(
            s,
            call.principal.environment_id,
            now,
            interval=q.interval,
            group_by=q.groupBy,
            start=start,
            end=end,
            sort=q.sort,
            order=q.order,
            limit=q.limit,
            offset=q.offset,
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


class CostsOut(Out):
    defaultCostConfig: dict[str, Any] | None = None
    modelPriceOverrides: list[dict[str, Any]]


class ModelPriceOut(Out):
    model: str
    provider: str
    inputPricePerMillion: Amount
    outputPricePerMillion: Amount
    effectiveFrom: str
    source: Literal["builtin", "override"]


@api.route(
    "GET",
    "/settings/costs",
    role="admin",
    response=CostsOut,
    summary="The environment's default cost configuration and model price overrides",
    tags=TAGS,
)
async def get_costs(call: Call):
    async with call.ctx.db.reader() as s:
        return await costs.get_costs(s, call.principal.environment_id)


@api.route(
    "PUT",
    "/settings/costs",
    role="admin",
    body=CostsBody,
    response=CostsOut,
    summary="Set the default cost configuration and/or the model price overrides",
    tags=TAGS,
)
async def put_costs(call: Call):
    b: CostsBody = call.body
    given = b.model_fields_set
    kwargs: dict[str, Any] = {}
    if "defaultCostConfig" in given:
        kwargs["default_cost_config"] = b.defaultCostConfig
    if "modelPriceOverrides" in given:
        kwargs["model_price_overrides"] = b.modelPriceOverrides
    return await costs.update_costs(call.ctx, call.principal, **kwargs)


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
    now = await call.ctx.now(call.principal)
    async with call.ctx.db.reader() as s:
        rows = await costs.model_prices(s, call.principal.environment_id, now)
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


class AlertSettingsOut(Out):
    enabled: bool
    threshold: Amount
    windowDays: int
    customers: dict[str, Amount]


class AlertOut(Out):
    id: str
    type: Literal["margin.alert", "margin.recovered"]
    customerReferenceId: str
    threshold: Amount
    grossMargin: Amount | None = None
    revenue: Amount
    cost: Amount
    windowStart: datetime
    windowEnd: datetime
    createdAt: datetime


@api.route(
    "GET",
    "/analytics/alerts/settings",
    role="read",
    response=AlertSettingsOut,
    summary="Margin alert threshold, rolling window and per-customer thresholds",
    tags=TAGS,
)
async def get_alert_settings(call: Call):
    async with call.ctx.db.reader() as s:
        return await alerts.get_settings(s, call.principal.environment_id)


@api.route(
    "PUT",
    "/analytics/alerts/settings",
    role="admin",
    body=AlertSettingsBody,
    response=AlertSettingsOut,
    summary="Set the margin alert threshold, window and per-customer thresholds",
    tags=TAGS,
)
async def put_alert_settings(call: Call):
    raw = call.body.model_dump(exclude_unset=True)
    async with call.ctx.db.unit_of_work() as s:
        return await alerts.put_settings(s, call.principal.environment_id, raw)


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
    async with call.ctx.db.reader() as s:
        items, total = await alerts.list_alerts(s, call.principal.environment_id, q.limit, q.offset)
    return Page(items, total, q.limit, q.offset)

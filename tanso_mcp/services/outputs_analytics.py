"""Answer models of margin analytics: the views, the cost configuration, the model prices
and the margin alerts (the conventions of ``outputs``: undeclared fields are forbidden,
``Amount`` is an exact decimal).

The analytics use cases return these models; the REST responses, /openapi.json and the
``analytics`` tool group's outputSchemas are generated from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .outputs import Amount, Out

__all__ = [
    "AlertOut",
    "AlertSettingsOut",
    "CostsOut",
    "CustomerMarginOut",
    "DefaultCostConfigOut",
    "MarginRowOut",
    "MarginsOut",
    "MarginsPageOut",
    "ModelPriceOut",
    "ModelPriceOverrideOut",
    "ModelRateOut",
    "PageOut",
    "PointOut",
    "SubscriptionMarginOut",
    "TimeseriesOut",
    "TotalsOut",
]

Status = Literal["healthy", "at_risk", "underwater"]


class TotalsOut(Out):
    """Sums over a set of events (exact: the micro-unit fields are the sums themselves)."""

    events: int
    usageUnits: Amount
    revenue: Amount
    cost: Amount
    grossMargin: Amount | None = Field(
        default=None, description="(revenue - cost) / revenue; absent without revenue"
    )
    status: Status | None = Field(
        default=None,
        description="healthy (>= 0.70), at_risk (>= 0.40) or underwater; absent with "
        "neither revenue nor cost",
    )
    revenueMicros: int
    costMicros: int
    eventsWithoutCost: int
    unknownModelEvents: int = Field(
        description="events naming a model no price applied to (cost source none)"
    )


class MarginRowOut(TotalsOut):
    key: str = Field(description="customer reference, feature key, model or plan key")


class PageOut(Out):
    limit: int
    offset: int
    total: int
    hasMore: bool


class MarginsOut(Out):
    """Margin rows of one page (worst first by default) and totals over every row."""

    from_: datetime = Field(alias="from")
    to: datetime
    groupBy: str
    currency: str
    rows: list[MarginRowOut]
    totals: TotalsOut


class MarginsPageOut(MarginsOut):
    """Margin rows of one page (worst first by default), totals over every row, and the
    page (REST carries it in the envelope)."""

    pagination: PageOut


class SubscriptionMarginOut(Out):
    subscriptionId: str
    planKey: str
    mrr: Amount
    currentPeriodStart: datetime
    currentPeriodEnd: datetime
    periodUsageRevenue: Amount
    periodCost: Amount


class CustomerMarginOut(TotalsOut):
    """One customer's totals, margin by feature and by model, MRR and effective MRR."""

    from_: datetime = Field(alias="from")
    to: datetime
    customerReferenceId: str
    currency: str
    byFeature: list[MarginRowOut]
    byModel: list[MarginRowOut]
    mrr: Amount
    effectiveMrr: Amount = Field(description="MRR plus the usage revenue of current periods")
    subscriptions: list[SubscriptionMarginOut]


class PointOut(TotalsOut):
    start: datetime
    end: datetime
    groups: list[MarginRowOut] | None = Field(
        default=None, description="with groupBy: one row per key, in the order of keys"
    )


class TimeseriesOut(Out):
    """Revenue, cost and margin per bucket, with totals."""

    from_: datetime = Field(alias="from")
    to: datetime
    interval: str
    groupBy: str | None = None
    currency: str
    keys: list[str] | None = Field(default=None, description="with groupBy: the keys shown")
    buckets: list[PointOut]
    totals: TotalsOut


# --------------------------------------------------------------------------- cost configuration


class ModelRateOut(Out):
    input: Amount
    output: Amount


class DefaultCostConfigOut(Out):
    """Rates per cost unit for events with no explicit cost and no rule cost model."""

    default_cost_per_unit: Amount | None = None
    default_output_cost_per_unit: Amount | None = None
    model_costs: dict[str, Amount | ModelRateOut] = Field(
        description="per model: one rate, or input and output rates"
    )
    cost_unit: str


class ModelPriceOverrideOut(Out):
    provider: str
    model: str
    inputPricePerMillion: Amount
    outputPricePerMillion: Amount
    effectiveFrom: str = Field(description="YYYY-MM-DD (UTC)")


class CostsOut(Out):
    """The environment's cost configuration."""

    defaultCostConfig: DefaultCostConfigOut | None = None
    modelPriceOverrides: list[ModelPriceOverrideOut]


class ModelPriceOut(Out):
    model: str
    provider: str
    inputPricePerMillion: Amount
    outputPricePerMillion: Amount
    effectiveFrom: str = Field(description="YYYY-MM-DD (UTC)")
    source: Literal["builtin", "override"]


# --------------------------------------------------------------------------- margin alerts


class AlertSettingsOut(Out):
    """Margin alert settings."""

    enabled: bool
    threshold: Amount
    windowDays: int
    customers: dict[str, Amount] = Field(description="per-customer thresholds by reference")


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

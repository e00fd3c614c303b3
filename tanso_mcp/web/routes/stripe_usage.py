"""Stripe usage reconciliation: what the meters received against what was metered."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ...services import stripe_usage_view as svc
from ...services.outputs import Amount
from ..routing import Api, Call, QueryModel

api = Api("/api/v1/client")


class ReconciliationQuery(QueryModel):
    period: str | None = Field(
        default=None,
        max_length=40,
        description="`current` (default), `previous`, or a date (YYYY-MM-DD) / ISO 8601 "
        "date-time inside the period",
    )


class ReconciliationItem(BaseModel):
    customerReferenceId: str | None = None
    customerId: str
    subscriptionId: str
    featureKey: str | None = None
    featureId: str
    periodStart: datetime | None = Field(default=None, description="null: a lifetime counter")
    window: str = Field(description="`period`, or `lifetime` for accumulate-mode features")
    forwarded: bool = Field(description="whether this usage is forwarded to a Stripe meter")
    unitsAccepted: Amount
    unitsCoveredByCredits: Amount
    unitsBillable: Amount = Field(description="overage: accepted units not covered by credits")
    unitsReported: Amount = Field(description="units the Stripe meter has acknowledged")
    unitsPending: Amount = Field(description="billable units not acknowledged yet")


class ReconciliationOut(BaseModel):
    period: str | datetime
    forwarding: bool = Field(description="whether the environment forwards usage to Stripe")
    items: list[ReconciliationItem]
    totals: dict[str, Amount]


@api.route(
    "GET",
    "/stripe/usage-reconciliation",
    role="read",
    query=ReconciliationQuery,
    response=ReconciliationOut,
    summary="Per customer and feature for one period: units accepted, covered by credits, "
    "billable, reported to Stripe meters and pending",
    tags=["stripe"],
    errors=(400,),
)
async def usage_reconciliation(call: Call):
    q: ReconciliationQuery = call.query
    return await svc.usage_reconciliation(call.ctx, call.principal, q.period)

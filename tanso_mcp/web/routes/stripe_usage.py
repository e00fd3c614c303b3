"""Stripe usage reconciliation: what the meters received against what was metered."""

from __future__ import annotations

from pydantic import Field

from ...services import stripe_usage_view as svc
from ...services.outputs_stripe import ReconciliationOut
from ..routing import Api, Call, QueryModel

api = Api("/api/v1/client")


class ReconciliationQuery(QueryModel):
    period: str | None = Field(
        default=None,
        max_length=40,
        description="`current` (default), `previous`, or a date (YYYY-MM-DD) / ISO 8601 "
        "date-time inside the period",
    )


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

"""The optional ``stripe`` tool group: Stripe extras beyond the standard tools.

Off by default; enabled with ``mcp_tool_groups = ["stripe"]``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tanso_mcp.tools.fields import Text
from tanso_mcp.tools.specs import _ANY, ToolParams, ToolSpec, _ann, _object

__all__ = ["TOOL_SPECS"]

_STRIPE = "the Stripe integration"


class ReconciliationParams(ToolParams):
    period: Annotated[
        Text | None,
        Field(
            description="Which billing period: `current` (default), `previous`, or a date "
            "(YYYY-MM-DD) or ISO 8601 date-time inside it"
        ),
    ] = None


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="getStripeUsageReconciliation",
        title="Stripe usage reconciliation",
        description=(
            "For one billing period, per customer and feature: units accepted, units "
            "covered by credits, billable units (the overage), units the Stripe meter has "
            "acknowledged and units still pending. Pending units are sent by the background "
            "reporter (after each job pass and test-clock advance) and catch up by "
            "themselves after a Stripe outage. Accumulate-mode features are shown but "
            "never forwarded. Read-only."
        ),
        params=ReconciliationParams,
        role="read",
        annotations=_ann(read_only=True, idempotent=True),
        confirm=False,
        handler="get_stripe_usage_reconciliation",
        capability=_STRIPE,
        output_schema=_object(
            "The period's reconciliation.",
            period={"type": "string"},
            forwarding={"type": "boolean"},
            items={"type": "array", "items": _ANY},
            totals=_ANY,
        ),
        group="stripe",
    ),
)

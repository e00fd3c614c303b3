"""The optional ``stripe`` tool group: Stripe extras beyond the standard tools.

Off by default; enabled with ``mcp_tool_groups = ["stripe"]``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tanso_mcp.services.outputs_stripe import ReconciliationOut
from tanso_mcp.tools.fields import Text
from tanso_mcp.tools.specs import ToolParams, ToolSpec, group_tools

__all__ = ["TOOL_SPECS"]


class ReconciliationParams(ToolParams):
    period: Annotated[
        Text | None,
        Field(
            description="Which billing period: `current` (default), `previous`, or a date "
            "(YYYY-MM-DD) or ISO 8601 date-time inside it"
        ),
    ] = None


_tool = group_tools("stripe", "the Stripe integration")

TOOL_SPECS: tuple[ToolSpec, ...] = (
    _tool(
        "getStripeUsageReconciliation",
        "Stripe usage reconciliation",
        "For one billing period, per customer and feature: units accepted, units "
        "covered by credits, billable units (the overage), units the Stripe meter has "
        "acknowledged and units still pending. Pending units are sent by the background "
        "reporter (after each job pass and test-clock advance) and catch up by "
        "themselves after a Stripe outage. Accumulate-mode features are shown but "
        "never forwarded. Read-only.",
        ReconciliationParams,
        role="read",
        handler="get_stripe_usage_reconciliation",
        answer=ReconciliationOut,
    ),
)

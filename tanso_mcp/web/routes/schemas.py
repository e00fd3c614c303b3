"""Response models of the REST API: the answer models of ``services.outputs``, the same
ones every MCP tool's outputSchema is generated from (one description per resource)."""

from __future__ import annotations

from ...services.outputs import (
    CatalogPlanOut,
    CreditAllocationOut,
    CreditPoolOut,
    CustomerOut,
    FeatureOut,
    Out,
    PlanFeatureOut,
    PlanOut,
    PricingOut,
    SubscriptionOut,
    TierOut,
)

__all__ = [
    "CatalogPlanOut",
    "CreditAllocationOut",
    "CreditPoolOut",
    "CustomerOut",
    "FeatureOut",
    "Out",
    "PlanFeatureOut",
    "PlanOut",
    "PricingOut",
    "SubscriptionOut",
    "TierOut",
]

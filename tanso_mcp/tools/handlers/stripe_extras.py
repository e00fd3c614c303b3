"""The optional ``stripe`` tool group: the same use cases as the Stripe REST extras."""

from __future__ import annotations

from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import stripe_usage_view


async def get_stripe_usage_reconciliation(app: AppContext, p: Principal, params: Any):
    return await stripe_usage_view.usage_reconciliation(app, p, params.period)

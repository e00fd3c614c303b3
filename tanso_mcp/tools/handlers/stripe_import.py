"""Stripe discovery and import tools: the use cases of ``services.stripe_import``."""

from __future__ import annotations

from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import stripe_import


async def discover_stripe_data(app: AppContext, p: Principal, params: Any):
    return await stripe_import.discover(app, p)


async def import_stripe_data(app: AppContext, p: Principal, params: Any):
    return await stripe_import.start_import(app, p)


async def import_stripe_data_preview(app: AppContext, p: Principal, params: Any):
    return await stripe_import.import_preview(app, p)


async def get_stripe_import_status(app: AppContext, p: Principal, params: Any):
    return await stripe_import.import_status(app, p, params.jobId)

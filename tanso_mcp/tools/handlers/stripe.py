"""Stripe connection tools. Each handler calls the same ``services.stripe_setup``
function as the REST endpoint under ``/api/v1/tanso/stripe``."""

from __future__ import annotations

from typing import Any

from ...bootstrap import AppContext
from ...principal import Principal
from ...services import stripe_setup


def _secret(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


async def get_stripe_integration_status(app: AppContext, p: Principal, params: Any):
    return await stripe_setup.status(app, p)


async def register_stripe_api_key(app: AppContext, p: Principal, params: Any):
    return await stripe_setup.register_key(app, p, _secret(params.stripeApiKey))


async def register_stripe_api_key_preview(app: AppContext, p: Principal, params: Any):
    key = stripe_setup.check_key(p.mode, _secret(params.stripeApiKey), "stripeApiKey")
    current = await stripe_setup.status(app, p)
    return {
        "dryRun": True,
        "maskedApiKey": stripe_setup.stripe_secrets.mask(key),
        "replaces": current.maskedApiKey,
        "effects": ["store the key encrypted for this environment"],
    }


async def setup_stripe_integration(app: AppContext, p: Principal, params: Any):
    return await stripe_setup.setup(app, p)


async def setup_stripe_integration_preview(app: AppContext, p: Principal, params: Any):
    return await stripe_setup.setup_preview(app, p)

"""The Stripe payment provider ("Stripe Integration mode").

Stripe issues the invoices and collects the money; tanso-mcp keeps entitlements, credits
and metering, mirrors Stripe's subscriptions and invoices from webhooks, and forwards
metered overage to Stripe Billing Meters.

Like every provider, this package imports only the public plugin API
(``tanso_mcp.plugin``) and the ``stripe`` SDK: never the database or the services. It
is built per environment from that environment's configuration (the decrypted secret
key and webhook signing secret) and does no I/O until one of its async methods runs.
"""

from __future__ import annotations

from typing import Any

from tanso_mcp.plugin import ProviderInfo, hookimpl

from .provider import CAPABILITIES, NAME, WEBHOOK_EVENTS, StripeProvider

INFO = ProviderInfo(
    name=NAME,
    title="Stripe (Stripe Integration mode)",
    capabilities=CAPABILITIES,
    description="Stripe invoices and collects payments through Checkout and "
    "subscriptions; tanso-mcp mirrors them from webhooks and forwards metered overage "
    "to Stripe Billing Meters.",
)


@hookimpl(trylast=True)
def tanso_payment_providers() -> list[ProviderInfo]:
    return [INFO]


@hookimpl(trylast=True)
def tanso_make_payment_provider(name: str, config: dict[str, Any], ctx: Any):
    if name != NAME:
        return None
    settings = getattr(ctx, "settings", None)
    secrets = config.get("secrets") or {}
    return StripeProvider(
        api_key=secrets.get("api_key") or config.get("api_key") or "",
        webhook_secret=secrets.get("webhook_secret") or config.get("webhook_secret"),
        api_base=config.get("api_base") or getattr(settings, "stripe_api_base", None),
        max_network_retries=int(
            config.get("max_network_retries", getattr(settings, "stripe_max_network_retries", 2))
        ),
    )


@hookimpl
def tanso_plugin_info() -> dict[str, Any]:
    return {"name": "tanso_stripe", "description": "built-in Stripe payment provider"}


__all__ = ["CAPABILITIES", "INFO", "NAME", "WEBHOOK_EVENTS", "StripeProvider"]

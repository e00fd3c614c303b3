"""Which payment provider serves an environment.

The environment row names its provider (``environments.payment_provider``, ``native``
by default); the plugin manager builds it (hook ``tanso_make_payment_provider``). The
core asks the provider's ``capabilities`` whether it owns invoicing, allows mark-paid or
several subscriptions per customer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Environment
from ..errors import PreconditionFailed
from ..plugin import PaymentProvider, UnknownProvider

if TYPE_CHECKING:
    from ..context import AppContext


async def provider_name(s: AsyncSession, env_id: str) -> tuple[str, dict[str, Any]]:
    row = (
        await s.execute(
            select(Environment.payment_provider, Environment.settings).where(
                Environment.id == env_id
            )
        )
    ).first()
    if row is None:
        return "native", {}
    settings = row[1] or {}
    config = settings.get("provider_config") or {}
    return row[0] or "native", dict(config) if isinstance(config, dict) else {}


async def provider_for(
    ctx: AppContext, s: AsyncSession, env_id: str, *, name: str | None = None
) -> PaymentProvider:
    """The environment's provider (or the provider ``name``, e.g. to set it up), built
    once per environment, provider and version of its stored credentials. Its config
    holds the environment's decrypted credentials under ``secrets`` (``api_key``,
    ``webhook_secret``)."""
    from . import stripe_secrets

    current, config = await provider_name(s, env_id)
    name = name or current
    found = await stripe_secrets.rows(s, env_id)
    cache = ctx.providers
    key = (env_id, name, stripe_secrets.fingerprint(found))
    provider = cache.get(key)
    if provider is None:
        if found:
            plain = await stripe_secrets.decrypt_all(ctx, s, env_id)
            config["secrets"] = {
                n.split(".", 1)[1]: v for n, v in plain.items() if n.startswith(f"{name}.")
            }
        try:
            provider = ctx.plugins.make_provider(name, config, ctx)
        except UnknownProvider:
            raise PreconditionFailed(
                f"the environment's payment provider {name!r} is not installed"
            ) from None
        retired = ctx.extras.setdefault("retired_providers", [])
        for old in [k for k in cache if k[:2] == (env_id, name)]:  # older credentials
            retired.append(cache.pop(old))
        if not ctx.extras.get("providers_closer"):
            ctx.extras["providers_closer"] = True
            ctx.on_close(lambda: _close_providers(ctx))
        cache[key] = provider
    return provider


def forget_provider(ctx: AppContext, env_id: str) -> None:
    """Drop cached providers of an environment (after its provider configuration changes);
    their connections are closed with the context (a call may still be using them)."""
    cache = ctx.providers
    retired = ctx.extras.setdefault("retired_providers", [])
    for key in [k for k in cache if k[0] == env_id]:
        retired.append(cache.pop(key))


async def _close_providers(ctx: AppContext) -> None:
    """Providers may hold connections (an optional ``aclose()``): closed at shutdown."""
    cache = ctx.providers
    everything = [*cache.values(), *ctx.extras.get("retired_providers", [])]
    cache.clear()
    ctx.extras["retired_providers"] = []
    for provider in everything:
        close = getattr(provider, "aclose", None)
        if close is not None:
            await close()

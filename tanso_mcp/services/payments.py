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


async def provider_for(ctx: AppContext, s: AsyncSession, env_id: str) -> PaymentProvider:
    """The environment's provider (built once per environment and provider name)."""
    name, config = await provider_name(s, env_id)
    cache = ctx.providers
    key = (env_id, name)
    provider = cache.get(key)
    if provider is None:
        try:
            provider = ctx.plugins.make_provider(name, config, ctx)
        except UnknownProvider:
            raise PreconditionFailed(
                f"the environment's payment provider {name!r} is not installed"
            ) from None
        cache[key] = provider
    return provider


def forget_provider(ctx: AppContext, env_id: str) -> None:
    """Drop cached providers of an environment (after its provider configuration changes)."""
    cache = ctx.providers
    for key in [k for k in cache if k[0] == env_id]:
        cache.pop(key, None)

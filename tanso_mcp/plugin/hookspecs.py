"""Hook specifications: the whole contract between tanso-mcp and its plugins.

Hooks are synchronous (pluggy cannot await: an ``async def`` first-result hook would
return a coroutine, which is never ``None`` and so always "wins"). They return objects;
asynchronous work lives on the returned object (a provider's async methods) or in the
awaitable a domain-event hook may return, which the core awaits after the commit.

Every hook here must carry a docstring; ``tests/test_plugins.py`` checks it, and
``plugins/README.md`` documents each one for plugin authors.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from .api import DomainEvent, PaymentProvider, ProviderInfo, hookspec


@hookspec
def tanso_payment_providers() -> list[ProviderInfo]:
    """Describe the payment providers this plugin offers.

    Return a list of :class:`~tanso_mcp.plugin.api.ProviderInfo` (name, title,
    capabilities, optional settings model). Called once when the plugin manager is
    built and by ``tanso-mcp plugins``. Names must be unique across plugins.
    """
    return []  # pluggy calls the plugins' implementations, never a specification


@hookspec(firstresult=True)
def tanso_make_payment_provider(
    name: str, config: dict[str, Any], ctx: Any
) -> PaymentProvider | None:
    """Build the provider called ``name`` for one environment.

    ``config`` is the environment's provider configuration (for example decrypted
    credentials); ``ctx`` is the application context, for settings only. Return ``None``
    when ``name`` is not yours; the first non-``None`` answer wins. Must not do I/O:
    connect lazily in the provider's async methods.
    """


@hookspec
def tanso_domain_event(event: DomainEvent, ctx: Any) -> Awaitable[None] | None:
    """React to a committed domain event (``subscription.created``, ``invoice.paid``…).

    Called after the database commit, never inside a transaction, so it may call the
    network. Return ``None`` or an awaitable, which the core awaits; exceptions are
    logged and never undo or fail the request that caused the event. Keep it quick, or
    hand slow work (such as outbound HTTP with retries) to a background task.
    """


@hookspec
def tanso_startup(ctx: Any) -> Awaitable[None] | None:
    """The server is starting to serve (after migrations, before the first request).

    Return ``None`` or an awaitable, which the core awaits. The place to take up work
    an earlier process handed to the outbox (``outbox_of(ctx).claim(...)``); keep it
    quick and start background tasks for the rest. Exceptions are logged.
    """


@hookspec
def tanso_shutdown(ctx: Any) -> Awaitable[None] | None:
    """The server is stopping: it accepts no new requests and those in flight have been
    answered; the database is still open.

    Return ``None`` or an awaitable, which the core awaits (bounded by the server's
    shutdown timeout). Hand whatever is unfinished to ``outbox_of(ctx)`` so the next
    process finishes it; stop background tasks. Exceptions are logged.
    """


@hookspec
def tanso_plugin_info() -> dict[str, Any] | None:
    """Describe this plugin for the ``tanso-mcp plugins`` listing.

    Return ``{"name", "version", "description"}`` (any of them) or ``None``. Optional.
    """

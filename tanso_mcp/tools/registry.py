"""All tool implementations of this build, keyed by tool name."""

from __future__ import annotations

from .server import ToolImpl, handlers_from


def all_handlers() -> dict[str, ToolImpl]:
    from .handlers import billing, catalog, metering, stripe

    impls: dict[str, ToolImpl] = {}
    for module in (catalog, billing, metering, stripe):
        impls.update(handlers_from(module))
    return impls

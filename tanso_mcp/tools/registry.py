"""All tool implementations of this build, keyed by tool name."""

from __future__ import annotations

from .server import ToolImpl, handlers_from


def all_handlers() -> dict[str, ToolImpl]:
    from .handlers import catalog, metering

    impls: dict[str, ToolImpl] = {}
    for module in (catalog, metering):
        impls.update(handlers_from(module))
    return impls

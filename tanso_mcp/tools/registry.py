"""All tool implementations of this build, keyed by tool name."""

from __future__ import annotations

import importlib
import pkgutil

from .server import ToolImpl, handlers_from


def all_handlers() -> dict[str, ToolImpl]:
    """Every handler module under ``tools/handlers`` (one per capability or tool group)."""
    from . import handlers

    impls: dict[str, ToolImpl] = {}
    for info in sorted(pkgutil.iter_modules(handlers.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{handlers.__name__}.{info.name}")
        impls.update(handlers_from(module))
    return impls

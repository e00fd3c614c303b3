"""The plugin manager: one per application context (never a module global).

Built-in plugins are registered in code (the native provider, with ``trylast`` so an
external plugin can override a name); external ones are loaded from the ``tanso_mcp``
entry-point group, exactly as ``pip install`` makes them visible. ``check_pending()``
then fails early when a plugin implements a hook that does not exist (a typo would
otherwise never be called).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any, cast

import pluggy

from . import hookspecs
from .api import PROJECT, DomainEvent, PaymentProvider, ProviderInfo

log = logging.getLogger("tanso_mcp.plugins")

BUILTINS = ("tanso_native", "tanso_stripe")


class UnknownProvider(LookupError):
    pass


@dataclass(frozen=True)
class ProviderEntry:
    info: ProviderInfo
    plugin: str


class Plugins:
    """Thin typed facade over the pluggy manager."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm

    # --- providers ---------------------------------------------------------

    def providers(self) -> dict[str, ProviderEntry]:
        out: dict[str, ProviderEntry] = {}
        for impl in self.pm.hook.tanso_payment_providers.get_hookimpls():
            # pluggy types an implementation's answer as object; the spec says a list
            infos = cast("list[ProviderInfo] | None", impl.function())
            for info in infos or []:
                # later-registered (external) plugins are called first: first one wins
                out.setdefault(info.name, ProviderEntry(info, impl.plugin_name))
        return out

    def make_provider(self, name: str, config: dict[str, Any], ctx: Any) -> PaymentProvider:
        provider = self.pm.hook.tanso_make_payment_provider(name=name, config=config, ctx=ctx)
        if provider is None:
            raise UnknownProvider(f"no plugin provides the payment provider {name!r}")
        if not isinstance(provider, PaymentProvider):
            raise TypeError(f"payment provider {name!r} does not implement PaymentProvider")
        return provider

    # --- domain events -----------------------------------------------------

    async def emit(self, event: DomainEvent, ctx: Any) -> None:
        """Call every ``tanso_domain_event`` implementation; await what they return.
        A failing plugin is logged and never affects the others or the caller."""
        for impl in self.pm.hook.tanso_domain_event.get_hookimpls():
            try:
                result = impl.function(event=event, ctx=ctx)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("plugin %s failed on %s", impl.plugin_name, event.name)

    # --- serving lifecycle --------------------------------------------------

    async def lifecycle(self, hook_name: str, ctx: Any) -> None:
        """Call ``tanso_startup`` or ``tanso_shutdown`` on every plugin, awaiting what
        each returns; a failing plugin is logged and never stops the others."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                result = impl.function(ctx=ctx)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)

    # --- description (tanso-mcp plugins) -------------------------------------

    def describe(self) -> dict[str, Any]:
        plugins = []
        for name, plugin in self.pm.list_name_plugin():
            info = None
            fn = getattr(plugin, "tanso_plugin_info", None)
            if fn is not None:
                try:
                    info = fn()
                except Exception:  # describing must not crash the CLI
                    info = None
            dist = next(
                (d for p, d in self.pm.list_plugin_distinfo() if p is plugin),
                None,
            )
            plugins.append(
                {
                    "name": name,
                    "builtin": name in BUILTINS,
                    "distribution": f"{dist.project_name} {dist.version}" if dist else None,
                    "info": info,
                }
            )
        hooks = []
        for hook_name in sorted(n for n in dir(self.pm.hook) if n.startswith("tanso_")):
            caller = getattr(self.pm.hook, hook_name)
            spec = caller.spec
            doc = inspect.getdoc(spec.function) if spec else ""
            hooks.append(
                {
                    "name": hook_name,
                    "summary": (doc or "").split("\n")[0],
                    "implementations": [i.plugin_name for i in caller.get_hookimpls()],
                }
            )
        providers = [
            {
                "name": e.info.name,
                "title": e.info.title,
                "capabilities": sorted(e.info.capabilities),
                "plugin": e.plugin,
            }
            for e in self.providers().values()
        ]
        return {"plugins": plugins, "hooks": hooks, "providers": providers}


def build_plugins(
    *, load_entrypoints: bool = True, extra: tuple[Any, ...] | list[Any] = ()
) -> Plugins:
    """A plugin manager with the hook specs, the built-in plugins, the entry-point
    plugins (``load_entrypoints``) and ``extra`` plugin objects (tests, embedding)."""
    import importlib

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(PROJECT)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return Plugins(pm)

"""Plugin architecture (pluggy). Plugins and providers import from here only.

- :mod:`tanso_mcp.plugin.api` — ``hookimpl``, the ``PaymentProvider`` protocol,
  capabilities, data objects, ``DomainEvent``;
- :mod:`tanso_mcp.plugin.hookspecs` — the hooks, each documented;
- :mod:`tanso_mcp.plugin.testing` — the behavioural checks every payment provider must
  pass (for a provider's own test suite);
- :mod:`tanso_mcp.plugin.manager` — ``build_plugins()`` (built-ins in code, external
  plugins from the ``tanso_mcp`` entry-point group, ``check_pending()``).

The plugin author's guide is ``plugins/README.md``.
"""

from .api import *  # noqa: F403
from .api import __all__ as _api_all
from .manager import Plugins, ProviderEntry, UnknownProvider, build_plugins

__all__ = [*_api_all, "Plugins", "ProviderEntry", "UnknownProvider", "build_plugins"]

"""Plugin architecture (pluggy). Plugins and providers import from here only.

- :mod:`tanso_mcp.plugin.api` — ``hookimpl``, the ``PaymentProvider`` protocol,
  capabilities, data objects, ``DomainEvent``;
- :mod:`tanso_mcp.plugin.hookspecs` — the hooks, each documented;
- :mod:`tanso_mcp.plugin.errors` — how a provider reports a refused call, an unknown
  outcome or an unauthentic callback;
- :mod:`tanso_mcp.plugin.testing` — the behavioural checks every payment provider must
  pass (for a provider's own test suite);
- :mod:`tanso_mcp.plugin.manager` — ``build_plugins()`` (built-ins in code, external
  plugins from the ``tanso_mcp`` entry-point group, ``check_pending()``).

The plugin author's guide is ``plugins/README.md``.
"""

from .api import *  # noqa: F403
from .api import __all__ as _api_all
from .errors import OutcomeUnknown, ProviderError, ProviderRejected, WebhookRejected
from .manager import Plugins, ProviderEntry, UnknownProvider, build_plugins

__all__ = [
    *_api_all,
    "OutcomeUnknown",
    "Plugins",
    "ProviderEntry",
    "ProviderError",
    "ProviderRejected",
    "UnknownProvider",
    "WebhookRejected",
    "build_plugins",
]

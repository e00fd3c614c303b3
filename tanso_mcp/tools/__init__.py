"""MCP layer: the 34 tools as a declarative table (``specs``), optional tool groups
(``groups``, ``specs_<group>.py``) and the server around it.

Public API:

- ``build_mcp_server(app, handlers=None, *, stdio_principal=None, tool_groups=()) -> MCPServer``
- ``mcp_http_app(server, allowed_hosts) -> McpHttpApp(app, lifespan)``
- ``ToolImpl(handler, preview=None)``, ``handlers_from(module)``
- ``TOOL_SPECS`` / ``SPECS_BY_NAME`` / ``specs_for_role(role)``

Plugging in a tool: write ``async def cancel_subscription(app, principal, params)``
(``params`` is ``SPECS_BY_NAME["cancelSubscription"].params``, already validated; numbers
arrive as exact strings, enums upper-case) returning a dict or a list, and raise a
``TansoError`` subclass from ``tanso_mcp.errors`` for expected failures. Guarded tools may
add ``async def cancel_subscription_preview(app, principal, params) -> dict`` describing
what would happen (entities touched, money moved, credits clawed back, entitlements lost);
it must not write. Then ``build_mcp_server(app, handlers_from(module))`` or pass
``{"cancelSubscription": ToolImpl(handler, preview)}``. Tools without a handler answer
``precondition_failed`` ("not available yet").

Serving: HTTP — ``mcp = mcp_http_app(server, allowed_hosts)``, mount ``mcp.app`` at
``"/"`` as the last route and run ``mcp.lifespan`` in the host app's lifespan; the auth
middleware sets ``current_principal``. stdio — ``build_mcp_server(app, handlers,
stdio_principal=principal_of_TANSO_API_KEY)`` then ``await server.run_stdio_async()``.
"""

from tanso_mcp.tools.http import McpHttpApp, mcp_http_app
from tanso_mcp.tools.server import (
    Handler,
    Preview,
    ToolImpl,
    build_mcp_server,
    handlers_from,
    resolve_principal,
)
from tanso_mcp.tools.specs import SPECS_BY_NAME, TOOL_SPECS, ToolParams, ToolSpec, specs_for_role

__all__ = [
    "SPECS_BY_NAME",
    "TOOL_SPECS",
    "Handler",
    "McpHttpApp",
    "Preview",
    "ToolImpl",
    "ToolParams",
    "ToolSpec",
    "build_mcp_server",
    "handlers_from",
    "mcp_http_app",
    "resolve_principal",
    "specs_for_role",
]

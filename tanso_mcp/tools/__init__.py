"""MCP layer: the 34 tools as a declarative table (``specs``) and the server around it.

Public API:

- ``build_mcp_server(app, handlers=None, *, stdio_principal=None) -> MCPServer``
- ``mcp_http_app(server, allowed_hosts) -> McpHttpApp(app, lifespan)``
- ``ToolImpl(handler, preview=None)``, ``handlers_from(module)``
- ``TOOL_SPECS`` / ``SPECS_BY_NAME`` / ``specs_for_role(role)``
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

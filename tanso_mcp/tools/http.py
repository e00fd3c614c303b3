"""Serving the MCP server over stateless Streamable HTTP.

``mcp_http_app(server, allowed_hosts)`` returns ``(app, lifespan)``:

- ``app`` is the SDK's Starlette app answering ``/mcp`` (stateless, JSON responses, both
  protocol eras: 2025-11-25 with ``initialize`` and the handshake-free 2026-07-28).
  Mount it at ``"/"`` as the **last** route of the host application, e.g.
  ``Starlette(routes=[*rest_routes, Mount("/", app=mcp.app)], lifespan=...)``; mounting it
  under ``Mount("/mcp")`` makes the SDK answer with redirects.
- ``lifespan`` must run inside the host application's lifespan: the SDK's own lifespan
  does not run for a mounted app, and without ``session_manager.run()`` the first call
  fails with "Task group is not initialized". It can run only once per ``mcp_http_app``
  call (build a new server + app per host app instance, e.g. per test).

The server offers no server-initiated stream: ``GET /mcp`` answers 405 with ``Allow:
POST``, as the transport specifies for such servers (the SDK's stateless mode would hold
an event stream open forever with nothing on it, a connection per client). The SDK's
per-request INFO line ("Terminating session: None", once per stateless request) is
dropped; its warnings and errors are kept.

Authentication is not done here: an outer ASGI middleware checks ``X-API-Key`` or
``Authorization: Bearer``, answers 401 itself, and sets ``current_principal`` (or
``scope["state"]["principal"]``) for the tools.

``allowed_hosts`` feeds the SDK's DNS-rebinding protection (``Host`` header check, 421
otherwise): entries like ``"127.0.0.1:*"``, ``"localhost:*"``, ``"mcp.example.com"``.
Browser ``Origin`` headers are accepted for the same hosts over http and https unless
``allowed_origins`` is given. ``["*"]`` turns the check off (only behind a proxy that
validates ``Host`` itself).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NamedTuple

from mcp.server import MCPServer
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["MCP_PATH", "McpHttpApp", "mcp_http_app"]

MCP_PATH = "/mcp"


class McpHttpApp(NamedTuple):
    app: ASGIApp
    lifespan: Callable[..., AbstractAsyncContextManager[None]]
    """``lifespan(app=None)``: usable as a Starlette lifespan or as ``async with lifespan():``."""


def _security(
    allowed_hosts: Sequence[str], allowed_origins: Sequence[str] | None
) -> TransportSecuritySettings:
    hosts = [host.strip() for host in allowed_hosts if host.strip()]
    if not hosts:
        raise ValueError(
            "allowed_hosts is empty: every request would be refused (use ['*'] to disable)"
        )
    if "*" in hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if allowed_origins is None:
        allowed_origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=list(allowed_origins),
    )


_NO_GET_STREAM = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32600,
            "message": "Method Not Allowed: this server offers no server-initiated stream; "
            "send requests with POST",
        },
    }
).encode()


class _NoGetStream:
    """ASGI wrapper: GET (and HEAD) on the MCP endpoint answer 405, the rest goes to the
    SDK. A class, not a function: Starlette treats a plain function endpoint as a
    request/response handler rather than an ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [
                        (b"allow", b"POST"),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_NO_GET_STREAM)).encode()),
                    ],
                }
            )
            body = b"" if scope["method"] == "HEAD" else _NO_GET_STREAM
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class _DropPerRequestInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO and str(record.msg).startswith("Terminating session")
        )


_SDK_TRANSPORT_LOG = logging.getLogger("mcp.server.streamable_http")
if not any(isinstance(f, _DropPerRequestInfo) for f in _SDK_TRANSPORT_LOG.filters):
    _SDK_TRANSPORT_LOG.addFilter(_DropPerRequestInfo())


def mcp_http_app(
    server: MCPServer,
    allowed_hosts: Sequence[str],
    *,
    allowed_origins: Sequence[str] | None = None,
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
) -> McpHttpApp:
    """The stateless Streamable HTTP app for ``server`` at ``/mcp`` and its lifespan."""
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=_security(allowed_hosts, allowed_origins),
        max_request_body_size=max_request_body_size,
    )
    # Captured now: a later streamable_http_app() call would replace server.session_manager.
    session_manager = server.session_manager

    @asynccontextmanager
    async def lifespan(_app: Any = None) -> AsyncIterator[None]:
        async with session_manager.run():
            yield

    return McpHttpApp(_NoGetStream(app), lifespan)

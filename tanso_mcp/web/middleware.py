"""Pure ASGI middleware (no per-request task or stream copying): body size limit and
API-key authentication for the client API and the MCP endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PayloadTooLarge, TansoError, Unauthorized
from ..principal import current_principal
from .jsonio import dumps

if TYPE_CHECKING:
    from ..context import Keys

PROTECTED_PREFIXES = ("/api/v1/client", "/api/v1/tanso", "/mcp")


async def _send_error(send, exc: TansoError, extra_headers: list | None = None) -> None:
    body = dumps({"success": False, "error": {"code": exc.code, "message": exc.message}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await _send_error(send, self._error())
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        return await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")


def extract_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            v = value.decode("latin-1").strip()
            if v[:7].lower() == "bearer ":
                bearer = v[7:].strip()
    return bearer


class AuthMiddleware:
    def __init__(self, app, keys: Keys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            return await self.app(scope, receive, send)
        key = extract_key(scope["headers"])
        if not key:
            return await _send_error(
                send,
                Unauthorized("missing API key: send X-API-Key or Authorization: Bearer"),
                [(b"www-authenticate", b'Bearer realm="tanso-mcp"')],
            )
        principal = await self.keys.resolve(key)
        if principal is None:
            return await _send_error(
                send,
                Unauthorized("invalid or revoked API key"),
                [(b"www-authenticate", b'Bearer realm="tanso-mcp"')],
            )
        scope.setdefault("state", {})["principal"] = principal
        token = current_principal.set(principal)
        try:
            return await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)

"""Pure ASGI middleware (no per-request task or stream copying): the answer to whatever
escapes the application (503 for database faults), request rules (header, body and
media-type limits) and API-key authentication for the client API and the MCP
endpoint."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..db.faults import is_transient
from ..errors import (
    HeadersTooLarge,
    PayloadTooLarge,
    TansoError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from ..principal import current_principal
from .jsonio import dumps

if TYPE_CHECKING:
    from ..context import Keys

# The MCP endpoint (tools.http.MCP_PATH), not imported from there: a worker process
# imports this module (through web.server) before it answers the supervisor's health
# pings, and the tool layer takes seconds to import on a loaded machine.
MCP_PATH = "/mcp"
PROTECTED_PREFIXES = ("/api/v1/client", "/api/v1/tanso", MCP_PATH)
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

log = logging.getLogger("tanso_mcp.web")


def error_headers(exc: TansoError) -> list[tuple[bytes, bytes]]:
    """Headers an error answer carries besides its JSON type: ``Retry-After`` on 503."""
    retry = getattr(exc, "retry_after", None)
    return [(b"retry-after", str(retry).encode())] if retry is not None else []


def _is_mcp(path: str) -> bool:
    return path == MCP_PATH or path.startswith(MCP_PATH + "/")


def error_body(exc: TansoError, path: str) -> bytes:
    """The error envelope: the REST one, or on the MCP endpoint a JSON-RPC error whose
    ``message`` is ours and whose ``data`` is the REST error object. MCP clients read
    a JSON-RPC error out of a non-2xx answer and show its message (the Python SDK shows
    nothing else), while the HTTP status stays the authoritative signal."""
    if _is_mcp(path):
        # -32600: the request was refused before reaching MCP; -32603: server fault
        code = -32603 if exc.status >= 500 else -32600
        return dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": code, "message": exc.message, "data": exc.to_dict()},
            }
        )
    return dumps({"success": False, "error": exc.to_dict()})


async def _send_error(
    send, exc: TansoError, extra_headers: list | None = None, *, path: str = ""
) -> None:
    body = error_body(exc, path)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend(error_headers(exc))
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FaultMiddleware:
    """Outermost: whatever escapes the application is answered here and never re-raised
    (the server closes a connection whose application raised, so keep-alive clients
    would see resets). A database that cannot be reached or used is a 503
    ``unavailable`` with ``Retry-After`` — the request did nothing and may be sent
    again — anything else a logged 500. An answer already under way cannot be replaced:
    then the exception goes on and the connection closes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            path = scope.get("path", "")
            await _send_error(send, as_error(exc, path), path=path)


def as_error(exc: BaseException, where: str) -> TansoError:
    """The client-facing error for an exception the application did not answer."""
    if isinstance(exc, TansoError):
        return exc
    if is_transient(exc):
        log.warning("database unavailable at %s: %s", where, type(exc).__name__)
        return Unavailable()
    log.error("unhandled error at %s", where, exc_info=exc)
    return TansoError("internal server error")


def _media_type_error(value: bytes | None) -> UnsupportedMediaType | None:
    """``None`` when ``value`` is ``application/json`` with no charset or UTF-8."""
    if value is not None:
        media, _, params = value.decode("latin-1").partition(";")
        if media.strip().lower() == "application/json":
            charset = "utf-8"
            for param in params.split(";"):
                name, _, val = param.partition("=")
                if name.strip().lower() == "charset":
                    charset = val.strip().strip('"').lower()
            if charset in ("utf-8", "utf8"):
                return None
            return UnsupportedMediaType(
                f"request bodies must be UTF-8 JSON; charset {charset[:40]} is not accepted",
                field="Content-Type",
            )
    return UnsupportedMediaType(
        "request bodies must be sent as Content-Type: application/json", field="Content-Type"
    )


class RequestRulesMiddleware:
    """Request rules checked before any routing, from the headers alone: at most
    ``MAX_HEADERS`` headers of ``MAX_HEADER_BYTES`` in all (431; the HTTP server protocol
    in ``web/server.py`` enforces the same bound while the headers arrive, so they are
    never buffered beyond it), a body of at most ``max_bytes`` (413), and on the API and
    MCP paths a body only as ``application/json`` in UTF-8 (415)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        if len(headers) > MAX_HEADERS:
            return await _send_error(send, headers_too_large(), path=scope["path"])
        size = 0
        length = content_type = None
        chunked = False
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                chunked = True
        if size > MAX_HEADER_BYTES:
            return await _send_error(send, headers_too_large(), path=scope["path"])
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                return await _send_error(send, self._error(), path=scope["path"])
        if (
            scope["method"] in _BODY_METHODS
            and (chunked or (length is not None and length != b"0"))
            and scope["path"].startswith(PROTECTED_PREFIXES)
        ):
            refused = _media_type_error(content_type)
            if refused is not None:
                return await _send_error(send, refused, path=scope["path"])
        if length is None and not chunked:  # no body: nothing to count
            return await self.app(scope, receive, send)
        if chunked and _is_mcp(scope["path"]):
            return await self._read_then_call(scope, receive, send)
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

    async def _read_then_call(self, scope, receive, send):
        """A body of unknown length on the MCP endpoint is read, within the limit, before
        the SDK's app starts: that app answers an exception raised while it reads with a
        bare 500 of its own."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _send_error(send, self._error(), path=scope["path"])
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body exceeds the limit of {self.max_bytes} bytes", field="body"
        )


def headers_too_large() -> HeadersTooLarge:
    return HeadersTooLarge(
        f"request headers exceed the limit of {MAX_HEADERS} headers or "
        f"{MAX_HEADER_BYTES} bytes in all",
        field="headers",
    )


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


_CHALLENGE = b'Bearer realm="tanso-mcp"'


class AuthMiddleware:
    """API keys (``X-API-Key`` or ``Authorization: Bearer``) on the client API and the MCP
    endpoint; a missing or unknown key is a 401 with a ``Bearer`` challenge (RFC 6750:
    ``error="invalid_token"`` only when a key was sent). This server offers no OAuth, so
    the challenge names no ``resource_metadata``: clients that treat every 401 as the
    start of an OAuth flow anyway find no metadata to discover."""

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
                Unauthorized(
                    "missing API key: send X-API-Key or Authorization: Bearer", field="X-API-Key"
                ),
                [(b"www-authenticate", _CHALLENGE)],
                path=scope["path"],
            )
        principal = await self.keys.resolve(key)
        if principal is None:
            return await _send_error(
                send,
                Unauthorized("invalid or revoked API key", field="X-API-Key"),
                [(b"www-authenticate", _CHALLENGE + b', error="invalid_token"')],
                path=scope["path"],
            )
        scope.setdefault("state", {})["principal"] = principal
        token = current_principal.set(principal)
        try:
            return await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)

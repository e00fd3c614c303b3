"""A test-only stand-in for the real HTTP auth middleware.

It does what the real one will: read ``X-API-Key`` or ``Authorization: Bearer``, answer
401 itself for a missing or unknown key, and make the caller known to the tools. ``how``
selects the channel, so the tests can prove each one reaches the handlers:
``"contextvar"`` sets ``current_principal`` around the downstream call, ``"state"`` only
puts it at ``scope["state"]["principal"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from tanso_mcp.principal import Principal, current_principal


class KeyTableAuth:
    def __init__(
        self,
        app: ASGIApp,
        keys: Mapping[str, Principal],
        how: Literal["contextvar", "state"] = "contextvar",
    ) -> None:
        self.app = app
        self.keys = dict(keys)
        self.how = how

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("x-api-key")
        if key is None and headers.get("authorization", "").lower().startswith("bearer "):
            key = headers["authorization"][7:].strip()
        principal = self.keys.get(key or "")
        if principal is None:
            body = json.dumps(
                {"error": "unauthorized", "message": "missing or unknown API key"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if self.how == "state":
            scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)
            return
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)

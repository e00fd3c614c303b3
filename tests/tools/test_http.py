"""The MCP server over real stateless Streamable HTTP (uvicorn on a loopback port).

Driven by the SDK's own client in both protocol eras, with an ``X-API-Key`` header and a
stand-in auth middleware (``auth_stub.KeyTableAuth``). These tests are where we verify
that a ``ContextVar`` set by an outer ASGI middleware is visible inside tool handlers —
in the legacy stateless path the SDK runs the server in a task spawned from the request
task, in the 2026-07-28 path inline — and that ``scope["state"]["principal"]`` works as a
fallback channel.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tanso_mcp.tools import build_mcp_server, mcp_http_app

from .auth_stub import KeyTableAuth
from .conftest import MODES, PRINCIPALS, Recorder
from .contract import TOOLS_BY_ROLE

pytestmark = pytest.mark.anyio

KEYS = {f"sk_test_{role}": principal for role, principal in PRINCIPALS.items()}
APP_CONTEXT = object()


@dataclass
class Served:
    url: str
    base: str
    recorders: dict[str, Recorder]


def _build_app(recorders: dict[str, Recorder], how: Literal["contextvar", "state"]) -> Starlette:
    server = build_mcp_server(APP_CONTEXT, recorders)
    mcp = mcp_http_app(server, ["127.0.0.1:*", "localhost:*"])

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[Route("/healthz", healthz), Mount("/", app=mcp.app)],
        middleware=[Middleware(KeyTableAuth, keys=KEYS, how=how)],
        lifespan=mcp.lifespan,
    )


@pytest.fixture(params=["contextvar", "state"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    recorders = {
        "getCustomer": Recorder({"customerReferenceId": "c1"}),
        "adminListPlans": Recorder([]),
    }
    app = _build_app(recorders, request.param)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", loop="asyncio", http="h11", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    try:
        yield Served(url=f"{base}/mcp", base=base, recorders=recorders)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@asynccontextmanager
async def http_client(url: str, key: str, mode: str):
    async with create_mcp_http_client(headers={"X-API-Key": key}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ["read", "admin"])
async def test_listing_is_filtered_per_key(served: Served, role: str, mode: str) -> None:
    async with http_client(served.url, f"sk_test_{role}", mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert names == TOOLS_BY_ROLE[role]
    assert len(names) == {"read": 13, "admin": 34}[role]


@pytest.mark.parametrize("mode", MODES)
async def test_principal_reaches_the_handler(served: Served, mode: str) -> None:
    async with http_client(served.url, "sk_test_read", mode) as client:
        result = await client.call_tool("getCustomer", {"customerReferenceId": "c1"})
    assert not result.is_error
    assert result.structured_content == {"customerReferenceId": "c1"}
    [(app, principal, params)] = served.recorders["getCustomer"].calls
    assert app is APP_CONTEXT
    assert principal is PRINCIPALS["read"]
    assert params.customerReferenceId == "c1"


@pytest.mark.parametrize("mode", MODES)
async def test_role_is_enforced_over_http(served: Served, mode: str) -> None:
    async with http_client(served.url, "sk_test_client", mode) as client:
        denied = await client.call_tool("adminListPlans", {})
    assert denied.is_error and denied.structured_content is not None
    assert denied.structured_content["error"] == "forbidden"
    assert served.recorders["adminListPlans"].calls == []
    async with http_client(served.url, "sk_test_admin", mode) as client:
        allowed = await client.call_tool("adminListPlans", {})
    assert not allowed.is_error and allowed.structured_content == {"items": []}
    assert served.recorders["adminListPlans"].calls[0][1] is PRINCIPALS["admin"]


@pytest.mark.parametrize("mode", MODES)
async def test_bad_arguments_over_http(served: Served, mode: str) -> None:
    async with http_client(served.url, "sk_test_read", mode) as client:
        result = await client.call_tool("getCustomer", {"customerReferenceId": ["c1"]})
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "invalid_request"
    assert result.structured_content["field"] == "customerReferenceId"


def _initialize_body() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }


_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_raw_http_edges(served: Served) -> None:
    async with httpx.AsyncClient() as http:
        # no key / unknown key: the auth middleware answers, the MCP app never runs
        assert (
            await http.post(served.url, json=_initialize_body(), headers=_HEADERS)
        ).status_code == 401
        unknown = {**_HEADERS, "X-API-Key": "sk_test_nope"}
        assert (
            await http.post(served.url, json=_initialize_body(), headers=unknown)
        ).status_code == 401
        # Bearer works as well as X-API-Key; stateless: no session id is handed out
        bearer = {**_HEADERS, "Authorization": "Bearer sk_test_read"}
        ok = await http.post(served.url, json=_initialize_body(), headers=bearer)
        assert ok.status_code == 200
        assert ok.json()["result"]["serverInfo"]["name"] == "tanso-mcp"
        assert "mcp-session-id" not in ok.headers
        # a Host outside allowed_hosts is refused (DNS-rebinding protection)
        foreign = {**_HEADERS, "X-API-Key": "sk_test_read", "Host": "evil.example"}
        assert (
            await http.post(served.url, json=_initialize_body(), headers=foreign)
        ).status_code == 421
        # the rest of the host app is untouched by the MCP mount
        assert (await http.get(f"{served.base}/healthz")).json() == {"ok": True}


async def test_protocol_edges(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    headers = {**_HEADERS, "X-API-Key": "sk_test_read", "MCP-Protocol-Version": "2025-11-25"}
    async with httpx.AsyncClient(timeout=5) as http:
        # no server-initiated stream: GET answers 405 at once instead of an idle stream
        for method in ("GET", "HEAD"):
            r = await http.request(method, served.url, headers=headers)
            assert r.status_code == 405 and r.headers["allow"] == "POST"
        caplog.clear()
        # an unknown prompt or resource is invalid params (-32602), not a server error
        for n, (method, params) in enumerate(
            [("prompts/get", {"name": "nope"}), ("resources/read", {"uri": "tanso://nope"})]
        ):
            body = {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
            r = await http.post(served.url, json=body, headers=headers)
            assert r.status_code == 200 and r.json()["error"]["code"] == -32602, r.text
        for n in range(3):
            body = {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/list"}
            assert (await http.post(served.url, json=body, headers=headers)).status_code == 200
    noisy = [
        (r.levelname, r.name, r.getMessage())
        for r in caplog.records
        if r.name.startswith("mcp")
        and (r.levelno >= logging.ERROR or r.exc_info or r.getMessage().startswith("Terminat"))
    ]
    assert noisy == []


def test_allowed_hosts_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        mcp_http_app(build_mcp_server(None), [])

"""Helpers to drive the real MCP server: in-memory, over real Streamable HTTP (the full
Starlette app under uvicorn on a loopback port, in the test's own event loop), and stdio."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tanso_mcp.bootstrap import AppContext
from tanso_mcp.tools.registry import all_handlers
from tanso_mcp.tools.server import build_mcp_server
from tanso_mcp.web.app import create_app


@asynccontextmanager
async def inmemory(
    ctx: AppContext, key: str, tool_groups: tuple[str, ...] = ()
) -> AsyncIterator[Client]:
    principal = await ctx.keys.resolve(key)
    assert principal is not None
    server = build_mcp_server(
        ctx, all_handlers(), stdio_principal=principal, tool_groups=tool_groups
    )
    async with Client(server) as client:
        yield client


async def call(
    client: Client, name: str, args: dict[str, Any] | None = None
) -> tuple[bool, dict[str, Any]]:
    result = await client.call_tool(name, args or {})
    assert result.structured_content is not None, result
    assert json.loads(result.content[0].text) == result.structured_content
    return bool(result.is_error), result.structured_content


async def ok(client: Client, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    is_error, data = await call(client, name, args)
    assert not is_error, (name, data)
    return data


async def fails(client: Client, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    is_error, data = await call(client, name, args)
    assert is_error, (name, data)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def live_server(ctx: AppContext) -> AsyncIterator[str]:
    """The full app served by uvicorn on a free loopback port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(ctx),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http="h11",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def http_client(base: str, key: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"X-API-Key": key} if key else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(
            streamable_http_client(f"{base}/mcp", http_client=http), mode=mode
        ) as client:
            yield client

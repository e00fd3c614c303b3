from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from mcp.client import Client

from tanso_mcp.principal import Principal
from tanso_mcp.tools import build_mcp_server

PRINCIPALS = {
    role: Principal(
        account_id="acct_1",
        environment_id="env_test",
        mode="test",
        role=role,
        key_id=f"key_{role}",
    )
    for role in ("read", "client", "admin")
}

MODES = ["auto", "legacy"]  # 2026-07-28 (default) and 2025-11-25


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Recorder:
    """A handler that remembers its calls and answers a fixed value."""

    answer: Any = field(default_factory=lambda: {"success": True})
    calls: list[tuple[Any, Principal, Any]] = field(default_factory=list)

    async def __call__(self, app: Any, principal: Principal, params: Any) -> Any:
        self.calls.append((app, principal, params))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@asynccontextmanager
async def connect(
    handlers: dict[str, Any] | None = None,
    *,
    role: str | None = "admin",
    mode: str = "auto",
    app: Any = None,
    tool_groups: tuple[str, ...] = (),
) -> AsyncIterator[Client]:
    server = build_mcp_server(
        app if app is not None else object(),
        handlers,
        stdio_principal=PRINCIPALS[role] if role else None,
        tool_groups=tool_groups,
    )
    async with Client(server, mode=mode) as client:
        yield client


async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Call a tool; return (is_error, structured content), checking the text mirrors it."""
    result = await client.call_tool(name, arguments)
    assert result.structured_content is not None, result
    assert len(result.content) == 1 and result.content[0].type == "text"
    assert json.loads(result.content[0].text) == result.structured_content
    return bool(result.is_error), result.structured_content

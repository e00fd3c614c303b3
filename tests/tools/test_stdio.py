"""The server over a real stdio pipe: the caller is the configured ``stdio_principal``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from .conftest import MODES
from .contract import TOOLS_BY_ROLE

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("stdio_server.py")


@pytest.mark.parametrize("mode", MODES)
async def test_stdio_uses_the_configured_principal(mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(SCRIPT)],
        env={**os.environ, "TANSO_TEST_ROLE": "client"},
    )
    async with Client(params, mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("getCustomer", {"customerReferenceId": "c1"})
    assert names == TOOLS_BY_ROLE["client"]
    assert not result.is_error
    assert result.structured_content == {
        "role": "client",
        "keyId": "key_client",
        "app": "stdio-app",
    }

"""A stdio MCP server for ``test_stdio.py``: the role comes from ``TANSO_TEST_ROLE``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tanso_mcp.principal import Principal  # noqa: E402
from tanso_mcp.tools import build_mcp_server  # noqa: E402


async def who_am_i(app, principal, params):
    return {"role": principal.role, "keyId": principal.key_id, "app": app}


def main() -> None:
    role = os.environ["TANSO_TEST_ROLE"]
    principal = Principal("acct_1", "env_test", "test", role, f"key_{role}")
    server = build_mcp_server("stdio-app", {"getCustomer": who_am_i}, stdio_principal=principal)
    anyio.run(server.run_stdio_async)


if __name__ == "__main__":
    main()

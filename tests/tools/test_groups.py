"""Optional tool groups: off by default (exactly the 34 standard tools), on by setting."""

from __future__ import annotations

import pytest

from tanso_mcp.settings import load_settings
from tanso_mcp.tools.groups import OPTIONAL_GROUPS, all_specs, enabled_specs
from tanso_mcp.tools.registry import all_handlers
from tanso_mcp.tools.specs import TOOL_SPECS

from .conftest import Recorder, call, connect
from .contract import SEED_TOOLS

pytestmark = pytest.mark.anyio

TESTING_TOOLS = {"getTestClock", "advanceTestClock", "setTestClockFrozen"}


def test_default_is_exactly_the_standard_tools() -> None:
    assert [spec.name for spec in enabled_specs()] == list(SEED_TOOLS)
    assert all(spec.group == "core" for spec in TOOL_SPECS)


def test_every_optional_tool_belongs_to_a_known_group() -> None:
    extra = [spec for spec in all_specs() if spec.group != "core"]
    assert {spec.group for spec in extra} <= set(OPTIONAL_GROUPS)
    assert TESTING_TOOLS <= {spec.name for spec in extra}
    names = [spec.name for spec in enabled_specs(["testing"])]
    assert names[:34] == list(SEED_TOOLS)
    assert set(names[34:]) == TESTING_TOOLS


def test_unknown_group_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MCP tool group"):
        enabled_specs(["timetravel"])


def test_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().mcp_tool_groups == []
    monkeypatch.setenv("TANSO_MCP_TOOL_GROUPS", '["testing", "analytics"]')
    assert load_settings().mcp_tool_groups == ["testing", "analytics"]
    monkeypatch.setenv("TANSO_MCP_TOOL_GROUPS", '["bogus"]')
    with pytest.raises(Exception, match="mcp_tool_groups"):
        load_settings()


def test_registry_finds_group_handlers() -> None:
    assert TESTING_TOOLS <= set(all_handlers())


async def test_server_lists_and_calls_only_enabled_groups() -> None:
    recorder = Recorder({"now": "2026-01-01T00:00:00.000Z", "frozen": True, "offsetSeconds": 0})
    handlers = {"getTestClock": recorder}
    async with connect(handlers) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert names == list(SEED_TOOLS)
        result = await client.call_tool("getTestClock", {})
        assert result.is_error and recorder.calls == []
    async with connect(handlers, tool_groups=("testing",)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == set(SEED_TOOLS) | TESTING_TOOLS
        is_error, data = await call(client, "getTestClock", {})
        assert not is_error and data["frozen"] is True
    async with connect(handlers, role="read", tool_groups=("testing",)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "getTestClock" in names and "advanceTestClock" not in names

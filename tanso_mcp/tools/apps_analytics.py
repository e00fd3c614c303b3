"""The margin tools as MCP Apps (the ``io.modelcontextprotocol/ui`` extension).

``getMarginSummary``, ``getCustomerMargin`` and ``getMarginTimeseries`` point at one
``ui://`` HTML resource, a margin dashboard the host renders in a sandboxed iframe: it
completes the Apps handshake with the host (``ui/initialize``) and draws the tool's
structured result when the host sends it (``ui/notifications/tool-result``). The page
is self-contained (inline CSS and script, no network; its CSP allows nothing else).

Hosts that did not negotiate Apps get, besides the structured result and its JSON
text, an SVG image of the same chart (the HTML report's chart code), so any client can
show it.
"""

from __future__ import annotations

import base64
from typing import Any

from mcp.server.apps import APP_MIME_TYPE, Apps, client_supports_apps
from mcp_types import ImageContent

from tanso_mcp.analytics_report import _bars, _time_chart

__all__ = ["APP_MIME_TYPE", "DASHBOARD_URI", "TOOL_UI", "extension", "fallback_image", "tool_meta"]

DASHBOARD_URI = "ui://tanso-mcp/margin-dashboard.html"
TOOL_UI = {
    "getMarginSummary": DASHBOARD_URI,
    "getCustomerMargin": DASHBOARD_URI,
    "getMarginTimeseries": DASHBOARD_URI,
}

DASHBOARD_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>tanso-mcp margin dashboard</title>
<style>
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:12px}
h1{font-size:16px;margin:0 0 8px}.meta{color:#57606a}
table{border-collapse:collapse;width:100%;margin-top:8px}
td,th{padding:3px 6px;border-bottom:1px solid #d0d7de;text-align:right}
td:first-child,th:first-child{text-align:left}
.s{color:#fff;border-radius:9px;padding:0 7px;font-size:11px}
.healthy{background:#1a7f37}.at_risk{background:#bf8700}.underwater{background:#cf222e}
.none{background:#8c959f}
</style></head>
<body><h1 id="title">Margins</h1><p class="meta" id="meta">Waiting for the tool result…</p>
<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="100%" height="0"></svg>
<table id="rows"></table>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const COLOURS = {revenue: "#0969da", cost: "#fb8500"};
let nextId = 1;
function send(msg) { window.parent.postMessage(Object.assign({jsonrpc: "2.0"}, msg), "*"); }
function request(method, params) { send({id: nextId++, method, params}); }
function el(tag, attrs, text) {
  const e = document.createElementNS(tag === "svg" || tag === "rect" || tag === "text" ? NS : "http://www.w3.org/1999/xhtml", tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function pct(m) { return m === undefined || m === null ? "—" : (Number(m) * 100).toFixed(2) + " %"; }
function rowsOf(data) {
  if (data.rows) return {title: "Margins by " + (data.groupBy || "customer"), rows: data.rows};
  if (data.byFeature) return {title: "Margins of " + data.customerReferenceId + " by feature", rows: data.byFeature};
  if (data.buckets) return {title: "Margins per " + data.interval, rows: data.buckets.map(b => Object.assign({key: String(b.start).slice(0, 16)}, b))};
  return {title: "Margins", rows: []};
}
function render(data) {
  const view = rowsOf(data || {});
  document.getElementById("title").textContent = view.title;
  const t = data.totals || data;
  document.getElementById("meta").textContent = "revenue " + t.revenue + " · cost " + t.cost + " · margin " + pct(t.grossMargin);
  const svg = document.getElementById("chart");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const rows = view.rows.slice(0, 40);
  let top = 1;
  for (const r of rows) top = Math.max(top, r.revenueMicros || 0, r.costMicros || 0);
  const rowH = 26, label = 170, width = 520;
  svg.setAttribute("height", String(rows.length * rowH + 10));
  svg.setAttribute("viewBox", "0 0 " + (label + width + 120) + " " + (rows.length * rowH + 10));
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    svg.appendChild(el("text", {x: label - 6, y: y + 14, "text-anchor": "end", "font-size": 11}, r.key));
    svg.appendChild(el("rect", {class: "bar revenue", x: label, y: y, height: 10, width: (r.revenueMicros || 0) / top * width, fill: COLOURS.revenue}));
    svg.appendChild(el("rect", {class: "bar cost", x: label, y: y + 11, height: 10, width: (r.costMicros || 0) / top * width, fill: COLOURS.cost}));
    svg.appendChild(el("text", {x: label + width + 8, y: y + 14, "font-size": 11}, pct(r.grossMargin)));
  });
  const table = document.getElementById("rows");
  table.textContent = "";
  const head = el("tr");
  for (const h of ["key", "events", "revenue", "cost", "margin", "status"]) head.appendChild(el("th", {}, h));
  table.appendChild(head);
  for (const r of view.rows) {
    const tr = el("tr", {"data-key": r.key, "data-revenue-micros": r.revenueMicros, "data-cost-micros": r.costMicros});
    for (const v of [r.key, r.events, r.revenue, r.cost, pct(r.grossMargin)]) tr.appendChild(el("td", {}, String(v)));
    const st = el("td");
    st.appendChild(el("span", {class: "s " + (r.status || "none")}, (r.status || "no activity").replace("_", " ")));
    tr.appendChild(st);
    table.appendChild(tr);
  }
}
window.addEventListener("message", (event) => {
  const msg = event.data;
  if (!msg || msg.jsonrpc !== "2.0") return;
  if (msg.id !== undefined && msg.result !== undefined && msg.method === undefined) {
    send({method: "ui/notifications/initialized", params: {}});
  } else if (msg.method === "ui/notifications/tool-result") {
    const result = msg.params || {};
    render(result.structuredContent || {});
  }
});
request("ui/initialize", {appInfo: {name: "tanso-mcp margin dashboard", version: "1"},
  appCapabilities: {}, protocolVersion: "2026-01-26"});
</script></body></html>
"""


def extension() -> Apps:
    apps = Apps()
    apps.add_html_resource(
        DASHBOARD_URI,
        DASHBOARD_HTML,
        name="margin-dashboard",
        title="Margin dashboard",
        description="Revenue, cost and gross margin of the margin tools' results",
        prefers_border=True,
    )
    return apps


def tool_meta(name: str) -> dict[str, Any] | None:
    uri = TOOL_UI.get(name)
    return {"ui": {"resourceUri": uri}} if uri else None


def fallback_image(name: str, structured: dict[str, Any], request_context: Any) -> Any:
    """An SVG chart of the result for clients without Apps (``None`` for other tools
    and for clients that render the ``ui://`` resource)."""
    if name not in TOOL_UI or not isinstance(structured, dict):
        return None
    if request_context is not None and client_supports_apps(request_context):
        return None
    currency = structured.get("currency", "")
    if "buckets" in structured:
        svg = _time_chart(structured)
    elif "byFeature" in structured:
        svg = _bars(structured["byFeature"], "chart-customer", currency)
    elif "rows" in structured:
        svg = _bars(structured["rows"], "chart-margins", currency)
    else:
        return None
    data = base64.b64encode(svg.encode()).decode()
    return ImageContent(type="image", data=data, mime_type="image/svg+xml")

"""`tanso-mcp report margins` writes one self-contained HTML file; rendered in a real
headless Chromium, its charts are drawn and its figures equal the REST views."""

from __future__ import annotations

import os
import re
import sys
from decimal import Decimal
from html.parser import HTMLParser

import anyio
import pytest

from tests.analytics_scenario import API, send, set_up
from tests.browser import dump_dom, png_colours, screenshot

pytestmark = pytest.mark.anyio


class Rows(HTMLParser):
    """Rows of the report's tables (their data-* attributes) and SVG shapes drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.table: str | None = None
        self.shapes: dict[str, int] = {}
        self.chart: str | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and (a.get("id") or "").startswith("table-"):
            self.table = a["id"].removeprefix("table-")
            self.tables[self.table] = {}
        if tag == "tr" and self.table and "data-key" in a:
            self.tables[self.table][a["data-key"]] = a
        if tag == "svg":
            self.chart = a.get("id")
            self.shapes.setdefault(self.chart, 0)
        if (
            tag in ("rect", "polyline")
            and self.chart
            and a.get("class", "").startswith(("bar", "margin-line"))
        ):
            width = float(a.get("width", "1") or 0)
            if width > 0:
                self.shapes[self.chart] += 1
        if tag in ("script", "link", "iframe") or (tag == "img" and "src" in a):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        if tag == "svg":
            self.chart = None


async def test_report_renders_in_chromium_with_the_rest_figures(ctx, client, tenant, tmp_path):
    await set_up(ctx, client, tenant)
    await send(client, tenant)
    env = tenant.env_ids["test"]
    out = tmp_path / "report.html"
    proc = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "tanso_mcp.cli",
            "report",
            "margins",
            "--environment",
            env,
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-02-01T00:00:00Z",
            "--out",
            str(out),
        ],
        env={**os.environ, "TANSO_DATABASE_URL": ctx.settings.database_url},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    source = out.read_text()
    assert "<script" not in source and "http://" not in source.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    dom = dump_dom(out.as_uri())
    parsed = Rows()
    parsed.feed(dom)
    assert parsed.external == []
    # every chart drew something
    for chart in ("chart-time", "chart-customers", "chart-models", "chart-features"):
        assert parsed.shapes.get(chart, 0) > 0, (chart, parsed.shapes)
    # the numbers are the REST views' numbers
    window = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "limit": 500}
    for group, table in (("customer", "customer"), ("model", "model"), ("feature", "feature")):
        r = await client.get(
            f"{API}/analytics/margins",
            params={"groupBy": group, **window},
            headers=tenant.headers("read"),
        )
        rows = r.json()["data"]["rows"]
        shown = parsed.tables[table]
        assert set(shown) == {row["key"] for row in rows}
        for row in rows:
            attrs = shown[row["key"]]
            assert int(attrs["data-revenue-micros"]) == row["revenueMicros"]
            assert int(attrs["data-cost-micros"]) == row["costMicros"]
            assert attrs["data-status"] == (row.get("status") or "")
            if row.get("grossMargin") is None:
                assert attrs["data-margin"] == ""
            else:
                assert Decimal(attrs["data-margin"]) == Decimal(str(row["grossMargin"]))
    # customers ranked by margin, lowest first
    assert list(parsed.tables["customer"]) == ["A", "B", "C"]
    assert re.search(r"12\.10 USD", dom) and re.search(r"5\.352000 USD", dom)
    png = screenshot(out.as_uri(), "margin-report.png", size="1280,1800")
    assert png_colours(png) > 8, "the screenshot is (nearly) one colour"

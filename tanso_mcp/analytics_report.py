"""The margin report: one self-contained HTML file (inline CSS and SVG, no JavaScript,
no network) with revenue, cost and margin over time, the customers ranked by margin
with their status colour, and margin by model and by feature.

``gather`` reads the figures through the same use cases as the REST views, so the
report shows exactly what ``/api/v1/client/analytics/…`` answers; ``render`` is a pure
function of those figures.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .services import analytics as svc

if TYPE_CHECKING:
    from .bootstrap import AppContext

STATUS_COLOURS = {"healthy": "#1a7f37", "at_risk": "#bf8700", "underwater": "#cf222e"}
NO_STATUS = "#8c959f"
REVENUE, COST, MARGIN = "#0969da", "#fb8500", "#6f42c1"
MAX_ROWS = 500


def _interval(start: datetime, end: datetime) -> str:
    span = end - start
    if span <= timedelta(days=3):
        return "hour"
    if span <= timedelta(days=120):
        return "day"
    if span <= timedelta(days=730):
        return "week"
    return "month"


async def gather(
    ctx: AppContext,
    environment_id: str,
    mode: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """The report's figures for one environment (window default: the current month on
    the environment's clock)."""
    now = await ctx.clocks.now(environment_id, mode)
    start, end = svc.window(now, start, end)
    async with ctx.db.reader() as s:
        customers, total = await svc.margins(
            s, environment_id, now, group_by="customer", start=start, end=end, limit=MAX_ROWS
        )
        models, _ = await svc.margins(
            s,
            environment_id,
            now,
            group_by="model",
            start=start,
            end=end,
            sort="cost",
            order="desc",
            limit=MAX_ROWS,
        )
        features, _ = await svc.margins(
            s,
            environment_id,
            now,
            group_by="feature",
            start=start,
            end=end,
            sort="cost",
            order="desc",
            limit=MAX_ROWS,
        )
        series = await svc.timeseries(
            s, environment_id, now, interval=_interval(start, end), start=start, end=end
        )
    return {
        "environment": f"{mode} ({environment_id})",
        "generatedAt": now,
        "from": start,
        "to": end,
        "currency": customers.currency,
        "totals": customers.totals.model_dump(),
        "customers": [r.model_dump() for r in customers.rows],
        "customerCount": total,
        "models": [r.model_dump() for r in models.rows],
        "features": [r.model_dump() for r in features.rows],
        "series": series.model_dump(by_alias=True),
    }


# --------------------------------------------------------------------------- rendering


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    d = Decimal(str(value))
    return f"{d:,.6f}".rstrip("0").rstrip(".") if d != d.to_integral() else f"{d:,.0f}"


def _money(value: Any, currency: str) -> str:
    d = Decimal(str(value))
    return f"{d:,.2f} {currency}" if d == d.quantize(Decimal("0.01")) else f"{d:,.6f} {currency}"


def _pct(margin: Any) -> str:
    if margin is None:
        return "—"
    return f"{Decimal(str(margin)) * 100:.2f} %"


def _status(row: dict[str, Any]) -> str:
    status = row.get("status")
    colour = STATUS_COLOURS.get(status or "", NO_STATUS)
    label = (status or "no activity").replace("_", " ")
    return f'<span class="status" style="background:{colour}">{_e(label)}</span>'


def _time_chart(series: dict[str, Any]) -> str:
    """Revenue and cost bars per bucket with the margin as a line (own axis, clipped to
    [-100 %, 100 %])."""
    points = series["buckets"]
    w, h, left, right, top, bottom = 960, 320, 70, 60, 20, 40
    plot_w, plot_h = w - left - right, h - top - bottom
    top_value = max(
        [Decimal(p["revenueMicros"]) for p in points]
        + [Decimal(p["costMicros"]) for p in points]
        + [Decimal(1)]
    )
    n = max(len(points), 1)
    slot = plot_w / n
    bar = max(slot * 0.38, 0.5)
    parts = [
        f'<svg class="chart" id="chart-time" role="img" viewBox="0 0 {w} {h}" '
        f'width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>Revenue, cost and margin per {_e(series['interval'])}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f6f8fa"/>',
    ]
    for k in range(5):
        y = top + plot_h * k / 4
        value = top_value * (4 - k) / 4 / 1_000_000
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_e(_num(value.quantize(Decimal("0.01"))))}</text>'
        )
        parts.append(
            f'<text x="{left + plot_w + 6}" y="{y + 4:.1f}" class="axis">{100 - 50 * k} %</text>'
        )
    line = []
    for i, p in enumerate(points):
        x = left + slot * i
        for j, (key, colour) in enumerate((("revenueMicros", REVENUE), ("costMicros", COST))):
            height = float(Decimal(p[key]) / top_value) * plot_h
            parts.append(
                f'<rect class="bar {key[:-6]}" x="{x + slot * 0.1 + j * bar:.2f}" '
                f'y="{top + plot_h - height:.2f}" width="{bar:.2f}" height="{height:.2f}" '
                f'fill="{colour}"><title>{_e(p["start"])}: {_e(key[:-6])} '
                f"{_e(_num(p[key[:-6]]))}</title></rect>"
            )
        if p.get("grossMargin") is not None:
            m = max(min(Decimal(str(p["grossMargin"])), Decimal(1)), Decimal(-1))
            y = top + plot_h * float((1 - m) / 2)
            line.append(f"{x + slot / 2:.2f},{y:.2f}")
        if i % max(n // 10, 1) == 0:
            label = (
                _when(p["start"])[5:10]
                if series["interval"] != "hour"
                else _when(p["start"])[11:16]
            )
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle" class="axis">{_e(label)}</text>'
            )
    if line:
        parts.append(
            f'<polyline class="margin-line" points="{" ".join(line)}" fill="none" '
            f'stroke="{MARGIN}" stroke-width="2.5"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _bars(rows: list[dict[str, Any]], chart_id: str, currency: str) -> str:
    """Horizontal revenue/cost bars per key, with margin and status."""
    rows = rows[:30]
    w, row_h, label_w = 960, 28, 220
    h = max(row_h * len(rows) + 30, 60)
    top_value = max(
        [Decimal(r["revenueMicros"]) for r in rows]
        + [Decimal(r["costMicros"]) for r in rows]
        + [Decimal(1)]
    )
    plot_w = w - label_w - 260
    parts = [
        f'<svg class="chart" id="{chart_id}" role="img" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, r in enumerate(rows):
        y = 10 + i * row_h
        rev = float(Decimal(r["revenueMicros"]) / top_value) * plot_w
        cost = float(Decimal(r["costMicros"]) / top_value) * plot_w
        colour = STATUS_COLOURS.get(r.get("status") or "", NO_STATUS)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="label">{_e(r["key"])}</text>'
        )
        parts.append(
            f'<rect class="bar revenue" x="{label_w}" y="{y}" width="{rev:.2f}" height="11" fill="{REVENUE}"/>'
        )
        parts.append(
            f'<rect class="bar cost" x="{label_w}" y="{y + 12}" width="{cost:.2f}" height="11" fill="{COST}"/>'
        )
        parts.append(
            f'<text x="{label_w + plot_w + 10}" y="{y + 15}" class="label" fill="{colour}">'
            f"{_e(_pct(r.get('grossMargin')))} · {_e(_money(r['revenue'], currency))} / "
            f"{_e(_money(r['cost'], currency))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[dict[str, Any]], kind: str, currency: str) -> str:
    out = [
        f'<table class="rows" id="table-{kind}"><thead><tr><th>#</th><th>{_e(kind)}</th>'
        "<th>events</th><th>usage units</th><th>revenue</th><th>cost</th><th>gross margin</th>"
        "<th>status</th></tr></thead><tbody>"
    ]
    for i, r in enumerate(rows, 1):
        margin = r.get("grossMargin")
        out.append(
            f'<tr data-key="{_e(r["key"])}" data-revenue-micros="{r["revenueMicros"]}" '
            f'data-cost-micros="{r["costMicros"]}" '
            f'data-margin="{_e(margin if margin is not None else "")}" '
            f'data-status="{_e(r.get("status") or "")}">'
            f"<td>{i}</td><td>{_e(r['key'])}</td><td>{r['events']}</td>"
            f"<td>{_e(_num(r['usageUnits']))}</td><td>{_e(_money(r['revenue'], currency))}</td>"
            f"<td>{_e(_money(r['cost'], currency))}</td><td>{_e(_pct(margin))}</td>"
            f"<td>{_status(r)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
margin:24px auto;max-width:1000px;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#57606a}.cards{display:flex;gap:12px;margin:16px 0}
.card{flex:1;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px}
.card b{display:block;font-size:20px}.axis{font-size:11px;fill:#57606a}
.label{font-size:12px;fill:#1f2328}.chart{max-width:100%;height:auto}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;text-align:right;
border-bottom:1px solid #d0d7de}th:nth-child(2),td:nth-child(2){text-align:left}
.status{color:#fff;border-radius:10px;padding:1px 8px;font-size:12px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
vertical-align:middle}
"""


def render(data: dict[str, Any]) -> str:
    """The whole HTML document for the figures of :func:`gather`."""
    t = data["totals"]
    cur = data["currency"]
    legend = (
        f'<p class="legend"><span style="background:{REVENUE}"></span>revenue'
        f'<span style="background:{COST}"></span>cost'
        f'<span style="background:{MARGIN}"></span>gross margin (right axis)</p>'
    )
    cards = "".join(
        f'<div class="card" id="total-{key}">{label}<b>{value}</b></div>'
        for key, label, value in (
            ("revenue", "Revenue", _e(_money(t["revenue"], cur))),
            ("cost", "Cost", _e(_money(t["cost"], cur))),
            ("margin", "Gross margin", _e(_pct(t.get("grossMargin")))),
            ("events", "Events", f"{t['events']:,}"),
            ("unknown", "Events of unknown models", f"{t['unknownModelEvents']:,}"),
        )
    )
    shown = len(data["customers"])
    more = (
        f"<p class=meta>The {shown} lowest margins of {data['customerCount']} customers.</p>"
        if data["customerCount"] > shown
        else ""
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>Margin report {_e(str(data['from'])[:10])} – {_e(str(data['to'])[:10])}</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>Margin report</h1>"
        f'<p class="meta">Environment {_e(data["environment"])} · {_e(_when(data["from"]))} to '
        f"{_e(_when(data['to']))} (end excluded) · generated at "
        f"{_e(_when(data['generatedAt']))} on the "
        "environment's clock</p>"
        f'<div class="cards">{cards}</div>'
        f"<h2>Revenue, cost and margin per {_e(data['series']['interval'])}</h2>{legend}"
        f"{_time_chart(data['series'])}"
        "<h2>Customers ranked by margin (lowest first)</h2>"
        f"{_bars(data['customers'], 'chart-customers', cur)}{more}"
        f"{_table(data['customers'], 'customer', cur)}"
        "<h2>Margin by model</h2>"
        f"{_bars(data['models'], 'chart-models', cur)}{_table(data['models'], 'model', cur)}"
        "<h2>Margin by feature</h2>"
        f"{_bars(data['features'], 'chart-features', cur)}"
        f"{_table(data['features'], 'feature', cur)}"
        '<p class="meta">Gross margin = (revenue − cost) / revenue; healthy ≥ 70 %, at risk '
        "≥ 40 %, else underwater. A row with cost and no revenue shows −100 %; a row with "
        "neither shows no margin.</p></body></html>"
    )

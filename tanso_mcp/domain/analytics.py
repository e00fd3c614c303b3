"""Margin analytics: pure rules for windows, rollup grains, time buckets and margin rows.

Time is counted in whole UTC hours since the Unix epoch ("epoch hours"). Sums are
integers: usage in 1/10 000 units, revenue and cost in micro-units (1e-6 of the
currency), so a view is exactly the sum of its events.

Windows are half-open ``[start, end)`` and fall on whole hours: the views are served
from hourly, daily and monthly rollups, so a window that cut an hour in two could not
be answered from them. :func:`decompose` splits a window into the fewest rollup ranges
(whole months, then whole days, then hours at the edges).

Margin of a row (:func:`margin_row`): ``(revenue − cost) / revenue`` to 4 dp; status
``healthy`` ≥ 0.70, ``at_risk`` ≥ 0.40, else ``underwater``. With zero revenue:
a row with a cost shows margin −1 and ``underwater`` (money goes out, none comes in);
a row with neither revenue nor cost shows no margin and no status (nothing to judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tanso_mcp.domain.margins import gross_margin, margin_status
from tanso_mcp.errors import InvalidRequest

__all__ = [
    "GRAINS",
    "INTERVALS",
    "MAX_BUCKETS",
    "Sums",
    "bucket_start",
    "buckets",
    "decompose",
    "default_window",
    "epoch_hour",
    "hour_start",
    "margin_row",
    "month_start",
    "validate_window",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = "h"
DAY = "d"
MONTH = "m"
GRAINS = (HOUR, DAY, MONTH)
INTERVALS = ("hour", "day", "week", "month")
# a time series answers at most this many buckets (a year of days, a month of hours…)
MAX_BUCKETS = 2000


def epoch_hour(dt: datetime) -> int:
    return int((dt - EPOCH).total_seconds() // 3600)


def hour_start(h: int) -> datetime:
    return EPOCH + timedelta(hours=h)


def month_start(dt: datetime) -> datetime:
    return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(dt: datetime) -> datetime:
    return (dt.replace(day=28) + timedelta(days=4)).replace(day=1)


def default_window(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``now``."""
    start = month_start(now.astimezone(UTC))
    return start, _next_month(start)


def validate_window(start: datetime, end: datetime) -> None:
    for name, value in (("from", start), ("to", end)):
        if value.minute or value.second or value.microsecond:
            raise InvalidRequest(
                f"{name} must fall on a whole hour (UTC): the views add up hourly rollups",
                field=name,
            )
    if end <= start:
        raise InvalidRequest("to must be after from", field="to")


def decompose(start: datetime, end: datetime) -> list[tuple[str, int, int]]:
    """Split the whole-hour window ``[start, end)`` into ``(grain, lo, hi)`` ranges of
    epoch hours: rollup rows of that grain whose bucket start ``b`` has
    ``lo <= b < hi``. Together the ranges cover every hour of the window exactly once."""
    out: list[tuple[str, int, int]] = []
    lo, hi = epoch_hour(start), epoch_hour(end)
    if hi <= lo:
        return out
    # whole months inside the window
    m_lo = month_start(start)
    if m_lo < start:
        m_lo = _next_month(m_lo)
    m_hi = month_start(end)
    if m_lo < m_hi:
        _days(out, lo, epoch_hour(m_lo))
        out.append((MONTH, epoch_hour(m_lo), epoch_hour(m_hi)))
        _days(out, epoch_hour(m_hi), hi)
    else:
        _days(out, lo, hi)
    return out


def _days(out: list[tuple[str, int, int]], lo: int, hi: int) -> None:
    if hi <= lo:
        return
    d_lo = -(-lo // 24) * 24
    d_hi = (hi // 24) * 24
    if d_lo < d_hi:
        if lo < d_lo:
            out.append((HOUR, lo, d_lo))
        out.append((DAY, d_lo, d_hi))
        if d_hi < hi:
            out.append((HOUR, d_hi, hi))
    else:
        out.append((HOUR, lo, hi))


def decompose_for(interval: str, start: datetime, end: datetime) -> list[tuple[str, int, int]]:
    """Like :func:`decompose`, but never with a grain coarser than a bucket of
    ``interval`` (hourly buckets need hourly rows; weeks are made of days)."""
    parts = decompose(start, end)
    if interval == "month":
        return parts
    out: list[tuple[str, int, int]] = []
    for grain, lo, hi in parts:
        if grain == MONTH:
            if interval == "hour":
                out.append((HOUR, lo, hi))
            else:
                out.append((DAY, lo, hi))
        elif grain == DAY and interval == "hour":
            out.append((HOUR, lo, hi))
        else:
            out.append((grain, lo, hi))
    return out


def bucket_start(interval: str, h: int) -> datetime:
    """Start of the ``interval`` bucket holding epoch hour ``h`` (weeks start on
    Monday, UTC)."""
    at = hour_start(h)
    if interval == "hour":
        return at
    day = at.replace(hour=0)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return month_start(at)
    raise InvalidRequest("interval must be one of hour, day, week, month", field="interval")


def _step(interval: str, at: datetime) -> datetime:
    if interval == "hour":
        return at + timedelta(hours=1)
    if interval == "day":
        return at + timedelta(days=1)
    if interval == "week":
        return at + timedelta(days=7)
    return _next_month(at)


def buckets(interval: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The ``interval`` buckets covering ``[start, end)``, each clipped to the window."""
    if interval not in INTERVALS:
        raise InvalidRequest("interval must be one of hour, day, week, month", field="interval")
    out: list[tuple[datetime, datetime]] = []
    at = bucket_start(interval, epoch_hour(start))
    while at < end:
        nxt = _step(interval, at)
        out.append((max(at, start), min(nxt, end)))
        if len(out) > MAX_BUCKETS:
            raise InvalidRequest(
                f"the window holds more than {MAX_BUCKETS} {interval} buckets; "
                "choose a longer interval or a shorter window",
                field="interval",
            )
        at = nxt
    return out


@dataclass
class Sums:
    """Integer sums over a set of events."""

    events: int = 0
    usage_q: int = 0
    revenue_micros: int = 0
    cost_micros: int = 0
    costed_events: int = 0
    unknown_model_events: int = 0

    def add(self, other: Sums) -> None:
        self.events += other.events
        self.usage_q += other.usage_q
        self.revenue_micros += other.revenue_micros
        self.cost_micros += other.cost_micros
        self.costed_events += other.costed_events
        self.unknown_model_events += other.unknown_model_events

    @classmethod
    def of(cls, row: Any) -> Sums:
        return cls(*(int(v or 0) for v in row))


def _units(q: int) -> Decimal | int:
    whole, rest = divmod(q, 10_000)
    return whole if rest == 0 else Decimal(q) / 10_000


def _money(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def margin_of(revenue_micros: int, cost_micros: int) -> tuple[Decimal | None, str | None]:
    """``(grossMargin, status)`` under the rules of the module docstring."""
    if revenue_micros == 0 and cost_micros == 0:
        return None, None
    margin = gross_margin(revenue_micros, cost_micros)
    return margin, margin_status(margin).value


def margin_row(key: Any, sums: Sums) -> dict[str, Any]:
    margin, status = margin_of(sums.revenue_micros, sums.cost_micros)
    return {
        "key": key,
        "events": sums.events,
        "usageUnits": _units(sums.usage_q),
        "revenue": _money(sums.revenue_micros),
        "cost": _money(sums.cost_micros),
        "grossMargin": margin,
        "status": status,
        "revenueMicros": sums.revenue_micros,
        "costMicros": sums.cost_micros,
        "eventsWithoutCost": sums.events - sums.costed_events,
        "unknownModelEvents": sums.unknown_model_events,
    }


def sort_rows(rows: list[dict[str, Any]], sort: str, order: str) -> list[dict[str, Any]]:
    """Sort margin rows by ``grossMargin`` (rows without a margin last), ``revenue`` or
    ``cost``; ties by key, so pages are stable."""
    field = {"grossMargin": "grossMargin", "revenue": "revenueMicros", "cost": "costMicros"}[sort]
    desc = order == "desc"
    present = [r for r in rows if r[field] is not None]
    absent = [r for r in rows if r[field] is None]
    present.sort(key=lambda r: str(r["key"]))
    present.sort(key=lambda r: r[field], reverse=desc)
    absent.sort(key=lambda r: str(r["key"]))
    return present + absent

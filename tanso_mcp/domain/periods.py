"""Calendar arithmetic for billing periods. Pure: the current time is always passed in.

* Only timezone-aware datetimes are accepted; they are converted to UTC (a naive
  datetime is an ``InvalidRequest`` naming the field, because it can come from client
  input such as a test-clock ``to`` or a grant's ``expiresAt``).
* Periods are half-open ``[start, end)``.
* Month arithmetic clamps to the end of the month: Jan 31 + 1 month = Feb 28 (Feb 29 in
  leap years). The *anchor day* (normally the day of the month the subscription started)
  keeps later periods on that day when the month allows it: with anchor 31 the period
  after Feb 28 ends on Mar 31, not Mar 28. Period ``k`` is computed from the original
  start (``nth_period``) so clamping never drifts.
* ``remaining_ratio`` works at millisecond precision.

Also: :func:`parse_datetime`, :func:`nth_period`,
:func:`period_containing`, :func:`remaining_fraction` (exact ratio for proration),
:func:`is_past_grace` (grace period check).
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any

from tanso_mcp.domain.money import CONTEXT
from tanso_mcp.errors import InvalidRequest

__all__ = [
    "UTC",
    "add_days",
    "add_months",
    "days_in_month",
    "ensure_utc",
    "is_past_grace",
    "nth_period",
    "parse_datetime",
    "period_bounds",
    "period_containing",
    "remaining_fraction",
    "remaining_ratio",
    "start_of_day",
]

_MS = timedelta(milliseconds=1)
_RATIO_QUANTUM = Decimal("1e-20")


def ensure_utc(dt: Any, field: str = "datetime") -> datetime:
    """Return ``dt`` converted to UTC; ``InvalidRequest`` if it is not an aware datetime."""
    if not isinstance(dt, datetime):
        raise InvalidRequest(f"{field} must be a datetime", field=field)
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidRequest(
            f"{field} must include a timezone (UTC), naive datetimes are ambiguous",
            field=field,
        )
    return dt.astimezone(UTC)


def parse_datetime(value: Any, field: str) -> datetime:
    """Parse an ISO-8601 timestamp with an offset or ``Z`` into an aware UTC datetime."""
    if isinstance(value, datetime):
        return ensure_utc(value, field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be an ISO-8601 timestamp", field=field)
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{field} must be an ISO-8601 timestamp (e.g. 2025-01-31T00:00:00Z)", field=field
        ) from None
    return ensure_utc(parsed, field)


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def add_months(dt: datetime, n: int, anchor_day: int | None = None) -> datetime:
    """``dt`` moved by ``n`` calendar months (``n`` may be negative), on ``anchor_day``
    (default ``dt.day``) clamped to the length of the target month. The time of day
    is kept."""
    dt = ensure_utc(dt, "dt")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an int")
    day = dt.day if anchor_day is None else anchor_day
    if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
        raise InvalidRequest("anchor_day must be an integer from 1 to 31", field="anchor_day")
    index = dt.year * 12 + (dt.month - 1) + n
    year, month = divmod(index, 12)
    month += 1
    if not 1 <= year <= 9999:
        raise InvalidRequest("date is out of range", field="dt")
    return dt.replace(year=year, month=month, day=min(day, days_in_month(year, month)))


def _check_interval(interval_months: int) -> None:
    if (
        isinstance(interval_months, bool)
        or not isinstance(interval_months, int)
        or interval_months < 1
    ):
        raise InvalidRequest("intervalMonths must be a positive integer", field="intervalMonths")


def period_bounds(
    start: datetime, interval_months: int, anchor_day: int | None = None
) -> tuple[datetime, datetime]:
    """The period ``[start, end)`` that begins at ``start`` and lasts
    ``interval_months``; ``end`` falls on ``anchor_day`` (default ``start.day``),
    clamped to month end."""
    start = ensure_utc(start, "start")
    _check_interval(interval_months)
    return start, add_months(start, interval_months, anchor_day)


def nth_period(anchor: datetime, interval_months: int, index: int) -> tuple[datetime, datetime]:
    """Period number ``index`` (0 = the first) of a schedule that started at ``anchor``;
    every boundary is computed from the anchor, so Jan 31 gives Feb 28, Mar 31, Apr 30…"""
    anchor = ensure_utc(anchor, "anchor")
    _check_interval(interval_months)
    start = add_months(anchor, index * interval_months, anchor.day)
    end = add_months(anchor, (index + 1) * interval_months, anchor.day)
    return start, end


def period_containing(
    anchor: datetime, interval_months: int, at: datetime
) -> tuple[int, datetime, datetime]:
    """``(index, start, end)`` of the period of the schedule started at ``anchor`` that
    contains ``at`` (``start <= at < end``). ``at`` before ``anchor`` gives negative
    indexes (periods before the anchor)."""
    anchor = ensure_utc(anchor, "anchor")
    at = ensure_utc(at, "at")
    _check_interval(interval_months)
    months = (at.year - anchor.year) * 12 + (at.month - anchor.month)
    index = months // interval_months
    # the estimate is at most one period off in either direction
    for _ in range(3):
        start, end = nth_period(anchor, interval_months, index)
        if at < start:
            index -= 1
        elif at >= end:
            index += 1
        else:
            return index, start, end
    raise AssertionError("period search did not converge")  # pragma: no cover


def remaining_fraction(now: datetime, start: datetime, end: datetime) -> Fraction:
    """Exact unused share of ``[start, end)`` at ``now``, in whole milliseconds,
    clamped to ``[0, 1]``. An empty or inverted period gives 0."""
    now = ensure_utc(now, "now")
    start = ensure_utc(start, "start")
    end = ensure_utc(end, "end")
    total = (end - start) // _MS
    if total <= 0:
        return Fraction(0)
    remaining = (end - now) // _MS
    return Fraction(min(max(remaining, 0), total), total)


def remaining_ratio(now: datetime, start: datetime, end: datetime) -> Decimal:
    """:func:`remaining_fraction` as a Decimal (20 dp). For proration prefer passing the
    exact Fraction, which the proration functions accept too."""
    q = remaining_fraction(now, start, end)
    if q in (0, 1):
        return Decimal(int(q))
    value = CONTEXT.divide(Decimal(q.numerator), Decimal(q.denominator))
    return value.quantize(_RATIO_QUANTUM, rounding=ROUND_HALF_EVEN, context=CONTEXT)


def start_of_day(dt: datetime) -> datetime:
    """Midnight UTC of ``dt``'s UTC date."""
    dt = ensure_utc(dt, "dt")
    return datetime.combine(dt.date(), time(0), tzinfo=UTC)


def add_days(dt: datetime, days: int) -> datetime:
    return ensure_utc(dt, "dt") + timedelta(days=days)


def is_past_grace(due_at: datetime | date, grace_days: int, now: datetime) -> bool:
    """Whether a ``DUE`` invoice has become ``PAST_DUE``: the UTC date of ``now`` is
    after ``due date + grace_days`` (e.g. due Mar 1, grace 3 -> past due from
    Mar 5 on). Day granularity, so the time of day of ``now`` does not matter."""
    if isinstance(grace_days, bool) or not isinstance(grace_days, int) or grace_days < 0:
        raise InvalidRequest("gracePeriod must be a whole number of days >= 0", field="gracePeriod")
    due = due_at if not isinstance(due_at, datetime) else ensure_utc(due_at, "dueDate").date()
    today = ensure_utc(now, "now").date()
    return today > due + timedelta(days=grace_days)

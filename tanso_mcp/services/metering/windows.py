"""Usage-counter windows (the rule's ``reset_mode`` window is
used everywhere — ingest enforcement, checks and evaluation alike).

- ``reset``: the billing period containing the event (normally the subscription's
  current period; a late event counts in the earlier period it belongs to, an event past
  ``currentPeriodEnd`` whose renewal has not run yet in the next one — periods follow
  the subscription's interval and anchor day);
- ``accumulate``: the subscription's lifetime, one counter row whose ``window_start`` is
  :data:`LIFETIME` (the epoch; a real period never starts there).

Counters serve limits and checks only; invoices re-read the events of the period they
close (services/usage.py), so a counter can never make an invoice wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ...domain.periods import add_months
from ...domain.rules import ResetMode

LIFETIME = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_STEPS = 1200


@dataclass(frozen=True, slots=True)
class SubPeriod:
    """What window arithmetic needs of a subscription."""

    started_at: datetime
    period_start: datetime
    period_end: datetime
    interval_months: int
    anchor_day: int


def period_start_for(sub: SubPeriod, at: datetime) -> datetime:
    start, end = sub.period_start, sub.period_end
    if start <= at < end:
        return start
    anchor = sub.anchor_day if 1 <= sub.anchor_day <= 31 else None
    interval = max(1, sub.interval_months)
    if at >= end:
        s = end
        for _ in range(_MAX_STEPS):
            e = add_months(s, interval, anchor)
            if at < e or e <= s:
                return s
            s = e
        return s
    e = start
    for _ in range(_MAX_STEPS):
        s = add_months(e, -interval, anchor)
        if at >= s or s >= e or s < sub.started_at:
            return s if s < e else e
        e = s
    return e


def window_start(sub: SubPeriod, reset_mode: ResetMode | str, at: datetime) -> datetime:
    if reset_mode == ResetMode.ACCUMULATE:
        return LIFETIME
    return period_start_for(sub, at)

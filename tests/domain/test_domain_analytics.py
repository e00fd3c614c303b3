"""Windows, rollup ranges and buckets of the margin analytics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tanso_mcp.domain.analytics import (
    DAY,
    HOUR,
    MONTH,
    Sums,
    bucket_start,
    buckets,
    decompose,
    decompose_for,
    default_window,
    epoch_hour,
    hour_start,
    margin_of,
    margin_row,
    validate_window,
)
from tanso_mcp.errors import InvalidRequest

hours = st.integers(
    min_value=epoch_hour(datetime(2024, 1, 1, tzinfo=UTC)),
    max_value=epoch_hour(datetime(2027, 1, 1, tzinfo=UTC)),
)


def _covered(parts):
    out = []
    for grain, lo, hi in parts:
        h = lo
        while h < hi:
            start = hour_start(h)
            if grain == HOUR:
                nxt = h + 1
            elif grain == DAY:
                assert h % 24 == 0
                nxt = h + 24
            else:
                assert start.day == 1 and start.hour == 0
                nxt = epoch_hour((start.replace(day=28) + timedelta(days=4)).replace(day=1))
            out.extend(range(h, nxt))
            h = nxt
    return out


@given(hours, st.integers(min_value=1, max_value=24 * 400))
def test_decompose_covers_every_hour_once(lo, span):
    start, end = hour_start(lo), hour_start(lo + span)
    for parts in (
        decompose(start, end),
        *(decompose_for(i, start, end) for i in ("hour", "day", "week")),
    ):
        assert _covered(parts) == list(range(lo, lo + span))


def test_decompose_uses_months_days_and_hours():
    parts = decompose(datetime(2026, 1, 3, 12, tzinfo=UTC), datetime(2026, 3, 2, 5, tzinfo=UTC))
    assert [g for g, _, _ in parts] == [HOUR, DAY, MONTH, DAY, HOUR]
    assert [
        g
        for g, _, _ in decompose_for(
            "hour", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
        )
    ] == [HOUR]


def test_window_rules():
    assert default_window(datetime(2026, 2, 14, 9, 30, tzinfo=UTC)) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    with pytest.raises(InvalidRequest) as err:
        validate_window(datetime(2026, 1, 1, 0, 30, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert err.value.field == "from"
    with pytest.raises(InvalidRequest) as err:
        validate_window(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert err.value.field == "to"


def test_buckets_weeks_start_on_monday_and_clip_to_the_window():
    spans = buckets("week", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC))
    assert spans[0] == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    assert spans[-1] == (datetime(2026, 1, 19, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC))
    assert bucket_start("month", epoch_hour(datetime(2026, 2, 17, 3, tzinfo=UTC))) == datetime(
        2026, 2, 1, tzinfo=UTC
    )
    with pytest.raises(InvalidRequest):
        buckets("hour", datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))


def test_margin_rules_with_zero_revenue():
    assert margin_of(0, 0) == (None, None)
    assert margin_of(0, 5) == (Decimal(-1), "underwater")
    assert margin_of(1_000_000, 300_000) == (Decimal("0.7"), "healthy")
    assert margin_of(1_000_000, 600_000) == (Decimal("0.4"), "at_risk")
    row = margin_row("A", Sums(3, 25_000, 1_500_000, 2_000_000, 2, 1))
    assert row["usageUnits"] == Decimal("2.5") and row["revenue"] == Decimal("1.500000")
    assert row["grossMargin"] == Decimal("-0.3333") and row["status"] == "underwater"
    assert row["eventsWithoutCost"] == 1 and row["unknownModelEvents"] == 1

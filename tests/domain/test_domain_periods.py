import calendar
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tanso_mcp.domain.periods import (
    add_days,
    add_months,
    ensure_utc,
    is_past_grace,
    nth_period,
    parse_datetime,
    period_bounds,
    period_containing,
    remaining_fraction,
    remaining_ratio,
    start_of_day,
)
from tanso_mcp.errors import InvalidRequest

PROPS = settings(database=None, deadline=None, max_examples=300)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_naive_datetimes_are_rejected_naming_the_field():
    naive = datetime(2025, 1, 1)
    with pytest.raises(InvalidRequest) as info:
        ensure_utc(naive, "expiresAt")
    assert info.value.field == "expiresAt"
    for call in (
        lambda: add_months(naive, 1),
        lambda: period_bounds(naive, 1),
        lambda: remaining_ratio(naive, utc(2025, 1, 1), utc(2025, 2, 1)),
        lambda: remaining_ratio(utc(2025, 1, 1), naive, utc(2025, 2, 1)),
        lambda: start_of_day(naive),
    ):
        with pytest.raises(InvalidRequest):
            call()
    with pytest.raises(InvalidRequest):
        ensure_utc("2025-01-01", "x")


def test_aware_non_utc_is_converted():
    plus2 = timezone(timedelta(hours=2))
    assert ensure_utc(datetime(2025, 1, 1, 1, tzinfo=plus2)) == utc(2024, 12, 31, 23)
    assert ensure_utc(datetime(2025, 1, 1, 1, tzinfo=plus2)).tzinfo is UTC


def test_parse_datetime():
    assert parse_datetime("2025-03-01T00:00:00Z", "to") == utc(2025, 3, 1)
    assert parse_datetime("2025-03-01T02:00:00+02:00", "to") == utc(2025, 3, 1)
    for bad in ("2025-03-01T00:00:00", "yesterday", "", None, 5):
        with pytest.raises(InvalidRequest) as info:
            parse_datetime(bad, "to")
        assert info.value.field == "to"


@pytest.mark.parametrize(
    ("start", "n", "anchor", "expected"),
    [
        (utc(2025, 1, 31), 1, None, utc(2025, 2, 28)),
        (utc(2024, 1, 31), 1, None, utc(2024, 2, 29)),
        (utc(2025, 2, 28), 1, 31, utc(2025, 3, 31)),
        (utc(2025, 2, 28), 1, 30, utc(2025, 3, 30)),
        (utc(2025, 3, 31), 1, None, utc(2025, 4, 30)),
        (utc(2025, 1, 15, 12, 30), 1, None, utc(2025, 2, 15, 12, 30)),
        (utc(2025, 11, 30), 3, None, utc(2026, 2, 28)),
        (utc(2025, 12, 31), 12, None, utc(2026, 12, 31)),
        (utc(2025, 3, 31), -1, None, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 12, None, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 48, None, utc(2028, 2, 29)),
    ],
)
def test_add_months_clamps(start, n, anchor, expected):
    assert add_months(start, n, anchor) == expected


def test_add_months_validation():
    with pytest.raises(InvalidRequest) as info:
        add_months(utc(2025, 1, 1), 1, 32)
    assert info.value.field == "anchor_day"
    with pytest.raises(InvalidRequest):
        add_months(utc(9999, 12, 1), 1)


def test_period_bounds_and_month_end_schedule():
    assert period_bounds(utc(2025, 1, 31), 1) == (utc(2025, 1, 31), utc(2025, 2, 28))
    assert period_bounds(utc(2025, 2, 28), 1, 31) == (utc(2025, 2, 28), utc(2025, 3, 31))
    assert period_bounds(utc(2025, 1, 1), 3) == (utc(2025, 1, 1), utc(2025, 4, 1))
    schedule = [nth_period(utc(2025, 1, 31), 1, k) for k in range(4)]
    assert schedule == [
        (utc(2025, 1, 31), utc(2025, 2, 28)),
        (utc(2025, 2, 28), utc(2025, 3, 31)),
        (utc(2025, 3, 31), utc(2025, 4, 30)),
        (utc(2025, 4, 30), utc(2025, 5, 31)),
    ]
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(InvalidRequest) as info:
            period_bounds(utc(2025, 1, 1), bad)
        assert info.value.field == "intervalMonths"


def test_period_containing():
    anchor = utc(2025, 1, 31, 10)
    assert period_containing(anchor, 1, utc(2025, 3, 5)) == (
        1,
        utc(2025, 2, 28, 10),
        utc(2025, 3, 31, 10),
    )
    assert period_containing(anchor, 1, utc(2025, 2, 28, 10)) == (
        1,
        utc(2025, 2, 28, 10),
        utc(2025, 3, 31, 10),
    )
    assert period_containing(anchor, 1, utc(2025, 2, 28, 9))[0] == 0
    assert period_containing(anchor, 1, anchor)[0] == 0
    assert period_containing(anchor, 1, utc(2024, 12, 31, 10))[0] == -1


def test_remaining_ratio_examples():
    start, end = utc(2025, 4, 1), utc(2025, 5, 1)  # 30 days
    assert remaining_fraction(utc(2025, 4, 21), start, end) == F(1, 3)
    assert remaining_ratio(utc(2025, 4, 21), start, end) == D("0.33333333333333333333")
    assert remaining_fraction(utc(2025, 4, 11), start, end) == F(2, 3)
    assert remaining_ratio(start, start, end) == 1
    assert remaining_ratio(end, start, end) == 0
    assert remaining_ratio(utc(2025, 3, 1), start, end) == 1
    assert remaining_ratio(utc(2025, 6, 1), start, end) == 0
    assert remaining_ratio(start, end, start) == 0  # inverted period
    assert remaining_ratio(start, start, start) == 0


def test_remaining_ratio_is_millisecond_precise():
    start, end = utc(2025, 1, 1), utc(2025, 1, 1, 0, 0, 1)  # one second
    now = utc(2025, 1, 1) + timedelta(microseconds=500_999)
    # 499.001 ms remain -> floor to 499 ms
    assert remaining_fraction(now, start, end) == F(499, 1000)


def test_start_of_day_and_add_days():
    assert start_of_day(utc(2025, 3, 5, 23, 59, 59)) == utc(2025, 3, 5)
    plus2 = timezone(timedelta(hours=2))
    assert start_of_day(datetime(2025, 3, 5, 1, tzinfo=plus2)) == utc(2025, 3, 4)
    assert add_days(utc(2025, 2, 27), 2) == utc(2025, 3, 1)


def test_grace_period_appendix_b():
    due = utc(2025, 3, 1)
    assert not is_past_grace(due, 3, utc(2025, 3, 4, 23, 59))
    assert is_past_grace(due, 3, utc(2025, 3, 5))
    assert is_past_grace(date(2025, 3, 1), 3, utc(2025, 3, 5, 0, 0, 1))
    assert is_past_grace(due, 0, utc(2025, 3, 2))
    with pytest.raises(InvalidRequest):
        is_past_grace(due, -1, utc(2025, 3, 2))


# --- properties --------------------------------------------------------------

aware = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@PROPS
@given(aware, st.integers(min_value=-240, max_value=240), st.one_of(st.none(), st.integers(1, 31)))
def test_add_months_properties(dt, n, anchor):
    result = add_months(dt, n, anchor)
    months = (result.year - dt.year) * 12 + result.month - dt.month
    assert months == n
    want = dt.day if anchor is None else anchor
    assert result.day == min(want, calendar.monthrange(result.year, result.month)[1])
    assert result.time() == dt.time()
    assert result.tzinfo is UTC


@PROPS
@given(aware, st.integers(1, 24), st.integers(0, 60))
def test_schedule_keeps_the_anchor_day(anchor, interval, k):
    start, end = nth_period(anchor, interval, k)
    assert start < end
    assert nth_period(anchor, interval, k + 1)[0] == end
    for boundary in (start, end):
        last = calendar.monthrange(boundary.year, boundary.month)[1]
        assert boundary.day == min(anchor.day, last)


@PROPS
@given(aware, st.integers(1, 12), aware)
def test_period_containing_contains(anchor, interval, at):
    index, start, end = period_containing(anchor, interval, at)
    assert start <= at < end
    assert (start, end) == nth_period(anchor, interval, index)


@PROPS
@given(aware, aware, aware)
def test_remaining_ratio_in_unit_interval(a, b, now):
    start, end = min(a, b), max(a, b)
    ratio = remaining_ratio(now, start, end)
    assert 0 <= ratio <= 1
    assert abs(F(ratio) - remaining_fraction(now, start, end)) <= F(1, 10**20)

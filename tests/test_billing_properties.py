"""Property tests for the billing schedule pieces the domain module does not cover:
renewal periods (also when resuming late) and the past-due instant; plus the proration
bounds as the billing service uses them (exact Fractions of milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tanso_mcp.domain.money import round_money
from tanso_mcp.domain.periods import add_months, is_past_grace, nth_period, remaining_fraction
from tanso_mcp.domain.proration import cancellation_refund, upgrade_adjustment
from tanso_mcp.services.billing import next_period, past_due_at

days = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(hour=0, minute=0, second=0, microsecond=0))
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)
prices = st.decimals(min_value=0, max_value=100_000, places=2)


@given(days, st.integers(1, 12), st.integers(0, 40))
def test_renewals_follow_the_anchor_schedule(start, interval, k):
    """Renewing k times from the first period gives exactly the anchor schedule's
    k-th period: contiguous, no drift after short months."""
    anchor = start.day
    s, e = start, add_months(start, interval, anchor)
    for _ in range(k):
        s, e = next_period(e, interval, anchor, e)  # renewal on time: now == old end
    assert (s, e) == nth_period(start, interval, k)
    assert s < e


@given(days, st.integers(1, 12), st.integers(0, 5000))
def test_resuming_late_lands_in_the_period_containing_now(start, interval, late_days):
    end = add_months(start, interval, start.day)
    now = end + timedelta(days=late_days, hours=3)
    s, e = next_period(end, interval, start.day, now)
    assert s <= now < e
    assert s >= end
    # still on the anchor schedule
    index = 0
    while nth_period(start, interval, index)[0] < s:
        index += 1
    assert nth_period(start, interval, index) == (s, e)


@given(moments, st.integers(0, 60))
def test_past_due_instant_is_the_first_moment_past_grace(due, grace):
    at = past_due_at(due, grace)
    assert is_past_grace(due, grace, at)
    assert not is_past_grace(due, grace, at - timedelta(microseconds=1))
    assert at.hour == at.minute == at.second == 0


@given(days, st.integers(1, 12), st.integers(0, 10**9), prices, prices)
def test_upgrade_and_refund_bounds_over_a_real_period(start, interval, offset_ms, old, new):
    end = add_months(start, interval, start.day)
    now = start + timedelta(milliseconds=offset_ms % int((end - start) / timedelta(milliseconds=1)))
    r = remaining_fraction(now, start, end)
    adj = upgrade_adjustment(r, old, new, "USD")
    # each line is one rounding of an exact product; the total is their sum
    assert adj.total == adj.new_charge_line + adj.old_credit_line
    assert -old <= adj.old_credit_line <= 0 <= adj.new_charge_line <= new
    assert abs(adj.total - round_money(r * Fraction(new - old), "USD")) <= Decimal("0.01")
    refund = cancellation_refund(r, old, "USD")
    assert -old <= refund <= 0
    # what the customer keeps paying for the used part never goes negative
    assert old + refund >= 0

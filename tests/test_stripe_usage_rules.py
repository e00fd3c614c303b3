"""The pure rules of meter reporting: identifiers, whole units, Stripe's timestamp
window, back-off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tanso_mcp.domain.meter_reports import (
    MAX_PAST,
    RETRY_MAX,
    meter_identifier,
    meter_timestamp,
    reportable_total,
    retry_delay,
)

T = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_identifier_is_deterministic_short_and_specific():
    a = meter_identifier("env", "sub", "feat", T, 0, 300000)
    assert a == meter_identifier("env", "sub", "feat", T, 0, 300000)
    assert a.startswith("tanso_") and len(a) <= 100
    others = {
        meter_identifier("env2", "sub", "feat", T, 0, 300000),
        meter_identifier("env", "sub2", "feat", T, 0, 300000),
        meter_identifier("env", "sub", "feat2", T, 0, 300000),
        meter_identifier("env", "sub", "feat", T + timedelta(days=31), 0, 300000),
        meter_identifier("env", "sub", "feat", T, 10000, 300000),
        meter_identifier("env", "sub", "feat", T, 0, 310000),
    }
    assert a not in others and len(others) == 6


def test_only_whole_units_are_reportable():
    assert reportable_total(305000, 10000) == 300000
    assert reportable_total(9999, 10000) == 0
    assert reportable_total(-5, 10000) == 0


@given(offset=st.integers(min_value=-400 * 86400, max_value=400 * 86400))
def test_timestamps_always_land_in_stripes_window(offset):
    stamp = meter_timestamp(T + timedelta(seconds=offset), T)
    assert T - MAX_PAST <= stamp + timedelta(seconds=1) and stamp <= T
    if -MAX_PAST.total_seconds() < offset <= 0:
        assert stamp == (T + timedelta(seconds=offset)).replace(microsecond=0)


def test_back_off_doubles_up_to_a_cap():
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_delay(50) == RETRY_MAX
